"""Test-time augmentation for instance segmentation: mmdet's ``DetTTAModel`` plus masks.

mmdet 3.3's ``DetTTAModel`` merges the boxes of the augmented views (flip undone, then NMS over
all views) and refuses predictions that carry masks ("TTA of instance segmentation does not
support now"), so Mask R-CNN and Cascade Mask R-CNN configs cannot use it. Each view's masks are
already pasted at the original image size (``rescale=True``), so they merge the same way as the
boxes: undo the view's flip, pool the views, and keep the mask of every detection NMS keeps.
"""
from typing import List

import torch
from mmcv.ops import batched_nms
from mmdet.models.test_time_augs import DetTTAModel
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

#: flip direction -> the mask dimensions it mirrors ((N, H, W) masks)
_FLIP_DIMS = {'horizontal': (-1,), 'vertical': (-2,), 'diagonal': (-2, -1)}


@MODELS.register_module()
class InstanceSegTTAModel(DetTTAModel):
    """``DetTTAModel`` that also merges instance masks; box-only predictions merge as there.

    Config: ``tta_model = dict(type='InstanceSegTTAModel', tta_cfg=dict(nms=dict(type='nms',
    iou_threshold=0.5), max_per_img=100))`` with a ``TestTimeAug`` ``tta_pipeline`` whose
    ``PackDetInputs`` keeps the ``flip`` and ``flip_direction`` meta keys.
    """

    def _merge_single_sample(self, data_samples: List[DetDataSample]) -> DetDataSample:
        if data_samples[0].pred_instances.get('masks', None) is None:
            return super()._merge_single_sample(data_samples)
        masks = []
        for sample in data_samples:
            view_masks = sample.pred_instances.masks
            if sample.metainfo['flip']:
                view_masks = view_masks.flip(_FLIP_DIMS[sample.metainfo['flip_direction']])
            masks.append(view_masks)
        bboxes, scores = self.merge_aug_bboxes(
            [s.pred_instances.bboxes for s in data_samples],
            [s.pred_instances.scores for s in data_samples],
            [s.metainfo for s in data_samples])
        labels = torch.cat([s.pred_instances.labels for s in data_samples])
        if bboxes.numel() == 0:
            return data_samples[0]
        dets, keep = batched_nms(bboxes, scores, labels, self.tta_cfg['nms'])
        top = self.tta_cfg['max_per_img']
        dets, keep = dets[:top], keep[:top]
        merged = InstanceData(bboxes=dets[:, :-1], scores=dets[:, -1], labels=labels[keep],
                              masks=torch.cat(masks)[keep])
        result = data_samples[0]
        result.pred_instances = merged
        return result
