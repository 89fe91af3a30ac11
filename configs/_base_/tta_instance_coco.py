# Test-time augmentation for the COCO instance-segmentation configs (tools/test.py --tta):
# three scales x horizontal flip, the views' boxes pooled by NMS (IoU 0.5, 100 per image), each
# kept detection with its own mask. Scales and NMS are mmdet's RetinaNet TTA config
# (mmdet::retinanet/retinanet_tta.py); mmdet's DetTTAModel refuses masks, so the model is this
# toolkit's InstanceSegTTAModel (mmdet_plugin/tta.py), the same merge plus masks.
tta_model = dict(
    type='InstanceSegTTAModel',
    tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))

tta_scales = [(1333, 800), (666, 400), (2000, 1200)]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=s, keep_ratio=True) for s in tta_scales],
        [dict(type='RandomFlip', prob=1.0), dict(type='RandomFlip', prob=0.0)],
        [dict(type='LoadAnnotations', with_bbox=True, with_mask=True)],
        [dict(type='PackDetInputs',
              meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor',
                         'flip', 'flip_direction'))],
    ]),
]
