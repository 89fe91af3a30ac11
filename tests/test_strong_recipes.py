"""The strong-backbone settings: UperNet 160k, Mask R-CNN 3x-MS, Cascade Mask R-CNN 3x, TTA.

Full-size configs are built (random weights, no forward) and checked against the published
table in ``benchmarks/published.py`` and against the recipes they inherit. The tiny demo configs
train one real iteration and evaluate through ``tools/train.py``, then ``tools/test.py --tta``
runs the multi-scale + flip test of a segmentor and a detector on the checkpoint.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from mmengine.config import Config
from mmengine.registry import init_default_scope

from benchmarks.published import UPERNET_ADE20K
from conftest import REPO, metrics_of, reported_metric

CONFIGS = REPO / 'configs'
ARCHS = ['poolformer_s12', 'poolformer_s24', 'poolformer_s36', 'poolformer_m36',
         'poolformer_m48', 'convformer_s18', 'convformer_s36', 'convformer_m36', 'caformer_s18',
         'caformer_s36', 'caformer_m36']
# UperNet also for the MetaFormer Baselines' IdentityFormer and RandFormer (the recipe is theirs).
UPERNET_ARCHS = ARCHS + [f'{family}_{size}' for family in ('identityformer', 'randformer')
                         for size in ('s12', 's24', 's36', 'm36', 'm48')]
ENV = dict(os.environ, OMP_NUM_THREADS='2', PYTHONWARNINGS='ignore', CUDA_VISIBLE_DEVICES='',
           PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]))


def build(cfg: Config, scope: str) -> torch.nn.Module:
    """The config's model with random weights, parameters on the meta device (no memory)."""
    import importlib
    importlib.import_module(f'{scope}_plugin')
    registry = importlib.import_module(f'{scope}.registry').MODELS
    init_default_scope(scope)
    cfg.model.backbone.init_cfg = None
    with torch.device('meta'):
        return registry.build(cfg.model)


def n_params(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


# ---------------------------------------------------------------------------------------------
# UperNet, ADE20K 160k
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('arch', UPERNET_ARCHS)
def test_upernet_config_is_the_swin_recipe_with_lr_1e4(arch):
    cfg = Config.fromfile(str(CONFIGS / f'upernet_{arch}.py'))
    assert cfg.model.backbone.type == 'MetaFormer' and cfg.model.backbone.arch == arch
    assert f'/{arch}.pth' in cfg.model.backbone.init_cfg.checkpoint
    assert cfg.model.decode_head.type == 'UPerHead' and cfg.model.decode_head.channels == 512
    aux = cfg.model.auxiliary_head
    assert (aux.type, aux.in_index, aux.loss_decode.loss_weight) == ('FCNHead', 2, 0.4)
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 1e-4, 0.01)
    assert cfg.train_cfg.max_iters == 160000
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 16
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.end, poly.type, poly.power, poly.end) == \
        ('LinearLR', 1500, 'PolyLR', 1.0, 160000)
    assert cfg.tta_model.type == 'SegTTAModel'
    # MS test: mmseg 0.x MultiScaleFlipAug semantics, ratios of the (2048, 512) test scale.
    resizes, flips = cfg.tta_pipeline[1].transforms[:2]
    assert [r.scale for r in resizes] == [(1024, 256), (1536, 384), (2048, 512), (2560, 640),
                                          (3072, 768), (3584, 896)]
    assert sorted(f.prob for f in flips) == [0.0, 1.0]


@pytest.mark.parametrize('arch', sorted(UPERNET_ADE20K))
def test_upernet_param_count_matches_the_published_table(arch):
    cfg = Config.fromfile(str(CONFIGS / f'upernet_{arch}.py'))
    model = build(cfg, 'mmseg')
    assert list(model.decode_head.in_channels) == list(model.backbone.out_channels)
    assert model.auxiliary_head.in_channels == model.backbone.out_channels[2]
    published = UPERNET_ADE20K[arch]['params_m']  # rounded to 1 M in the paper
    assert abs(n_params(model) - published) <= 1.0, \
        f'{arch}: {n_params(model):.2f} M parameters, published {published} M'


# ---------------------------------------------------------------------------------------------
# Mask R-CNN 3x-MS and Cascade Mask R-CNN 3x (ConvNeXt zoo recipe)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('method', ['mask_rcnn_3x_ms', 'cascade_mask_rcnn_3x'])
@pytest.mark.parametrize('arch', ARCHS)
def test_detection_config_builds_the_convnext_zoo_recipe(method, arch):
    cfg = Config.fromfile(str(CONFIGS / f'{method}_{arch}.py'))
    cascade = method.startswith('cascade')
    assert cfg.custom_imports.imports == ['mmdet_plugin']  # not the base's mmpretrain
    bb = cfg.model.backbone
    assert bb.type == 'MetaFormer' and bb.arch == arch and f'/{arch}.pth' in bb.init_cfg.checkpoint
    assert cfg.train_cfg.max_epochs == 36
    steps = [s for s in cfg.param_scheduler if s.type == 'MultiStepLR'][0]
    assert steps.milestones == [27, 33]
    choice = [t for t in cfg.train_pipeline if t.type == 'RandomChoice'][0]
    assert len(choice.transforms[0][0].scales) == 11  # short side 480..800
    wrapper = cfg.optim_wrapper
    assert (wrapper.type, wrapper.constructor) == ('OptimWrapper', 'MetaFormerLayerDecayConstructor')
    assert dict(wrapper.paramwise_cfg) == dict(decay_rate=0.7 if cascade else 0.95,
                                               decay_type='layer_wise')
    assert (wrapper.optimizer.lr, wrapper.optimizer.weight_decay) == (2e-4 if cascade else 1e-4,
                                                                      0.05)
    assert cfg.tta_model.type == 'InstanceSegTTAModel'

    model = build(cfg, 'mmdet')
    assert list(model.neck.in_channels) == list(model.backbone.out_channels)
    assert bb.drop_path_rate == (0.4 if n_params(model.backbone) < 35 else 0.6)
    if cascade:
        heads = model.roi_head.bbox_head
        assert len(heads) == 3
        for head in heads:
            assert (head.num_shared_convs, head.num_shared_fcs) == (4, 1)
            assert type(head.loss_bbox).__name__ == 'GIoULoss'


# ---------------------------------------------------------------------------------------------
# Tiny demo configs: one real iteration and one evaluation each, then the TTA test
# ---------------------------------------------------------------------------------------------
def run_tool(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f'{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    return proc


def ran_model(work_dir: Path) -> Config:
    """The model config a tool ran with, from the copy of the config the Runner saves."""
    (dumped,) = work_dir.glob('*.py')
    return Config.fromfile(str(dumped), import_custom_modules=False).model


DET_ONE_STEP = ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
                'train_dataloader.dataset.indices=2', 'val_dataloader.dataset.indices=2',
                'test_dataloader.dataset.indices=2',
                'train_dataloader.sampler.shuffle=False', 'default_hooks.checkpoint.interval=1',
                'default_hooks.logger.interval=1',
                # untrained: keep low-scoring detections so the metrics have input
                'model.test_cfg.rcnn.score_thr=0.0', 'model.test_cfg.rcnn.max_per_img=20']


@pytest.fixture(scope='module')
def trained(tmp_path_factory) -> dict:
    """Each new tiny demo config trained for one iteration (batch 2) and evaluated once."""
    out = {}
    for stem, options in [
            ('upernet_convformer_s18_tiny',
             ['train_cfg.max_iters=1', 'train_cfg.val_interval=1',
              'default_hooks.checkpoint.interval=1', 'default_hooks.logger.interval=1',
              'train_dataloader.dataset.indices=2', 'val_dataloader.dataset.indices=2',
              'test_dataloader.dataset.indices=2']),
            ('mask_rcnn_3x_ms_convformer_s18_tiny', DET_ONE_STEP),
            ('cascade_mask_rcnn_3x_convformer_s18_tiny', DET_ONE_STEP)]:
        work = tmp_path_factory.mktemp(stem)
        proc = run_tool('tools/train.py', CONFIGS / 'demo' / f'{stem}.py', '--work-dir', work,
                        '--cfg-options', *options)
        out[stem] = dict(work=work, log=proc.stdout + proc.stderr, options=options)
    return out


@pytest.mark.parametrize('stem', ['upernet_convformer_s18_tiny',
                                  'mask_rcnn_3x_ms_convformer_s18_tiny',
                                  'cascade_mask_rcnn_3x_convformer_s18_tiny'])
def test_tiny_demo_trains_one_step_and_evaluates(trained, stem):
    run = trained[stem]
    metrics = metrics_of(run['work'])
    assert metrics['iter'] == 1 and torch.isfinite(torch.tensor(metrics['loss']))
    if stem.startswith('upernet'):
        reported_metric(metrics, 'mIoU')
        assert (run['work'] / 'iter_1.pth').is_file()
    else:
        reported_metric(metrics, 'coco/bbox_mAP')
        reported_metric(metrics, 'coco/segm_mAP')
        assert (run['work'] / 'epoch_1.pth').is_file()
        # the layer-decay constructor built the optimizer: 8 layers for ConvFormer-S18
        assert 'MetaFormerLayerDecayConstructor (layer_wise' in run['log']


def test_tta_segmentation_runs_multi_scale_flip(trained, tmp_path):
    run = trained['upernet_convformer_s18_tiny']
    # the demo model at a smaller test scale (a checkpoint of the demo config fits it)
    config = REPO / 'tests' / 'configs' / 'upernet_convformer_s18_tools.py'
    # --out names a folder for segmentation, as in mmseg: one label-map PNG per image
    run_tool('tools/test.py', config, run['work'] / 'iter_1.pth',
             '--work-dir', tmp_path / 'ss', '--out', tmp_path / 'ss_png')
    run_tool('tools/test.py', config, run['work'] / 'iter_1.pth', '--tta',
             '--work-dir', tmp_path / 'ms', '--out', tmp_path / 'ms_png')
    assert (ran_model(tmp_path / 'ms').type, ran_model(tmp_path / 'ms').module.type) == \
        ('SegTTAModel', 'EncoderDecoder')
    assert ran_model(tmp_path / 'ss').type == 'EncoderDecoder'
    assert 'mIoU' in metrics_of(tmp_path / 'ms')
    ss = sorted((tmp_path / 'ss_png').glob('*.png'))
    ms = sorted((tmp_path / 'ms_png').glob('*.png'))
    assert ss and [p.name for p in ms] == [p.name for p in ss]
    ss = [np.asarray(Image.open(p)) for p in ss]
    ms = [np.asarray(Image.open(p)) for p in ms]
    for a, b in zip(ss, ms):  # full-size label maps, and 12 views averaged != one view
        assert a.shape == b.shape
    assert any((a != b).any() for a, b in zip(ss, ms))


def test_tta_instance_segmentation_merges_boxes_and_masks(trained, tmp_path):
    run = trained['mask_rcnn_3x_ms_convformer_s18_tiny']
    config = CONFIGS / 'demo' / 'mask_rcnn_3x_ms_convformer_s18_tiny.py'
    proc = run_tool('tools/test.py', config, run['work'] / 'epoch_1.pth', '--tta',
                    '--work-dir', tmp_path, '--out', tmp_path / 'tta.pkl', '--cfg-options',
                    'test_dataloader.dataset.indices=2', 'model.test_cfg.rcnn.score_thr=0.0',
                    'model.test_cfg.rcnn.max_per_img=20')
    assert (ran_model(tmp_path).type, ran_model(tmp_path).module.type) == \
        ('InstanceSegTTAModel', 'MaskRCNN')
    metrics = metrics_of(tmp_path)
    reported_metric(metrics, 'coco/bbox_mAP')
    reported_metric(metrics, 'coco/segm_mAP')
    with open(tmp_path / 'tta.pkl', 'rb') as f:
        results = pickle.load(f)
    for result in results:
        pred = result['pred_instances']
        assert 0 < len(pred['bboxes']) <= 100  # NMS over 6 views x 20, capped at 100
        assert len(pred['masks']) == len(pred['bboxes'])  # masks as RLE, one per box


def test_instance_tta_undoes_each_views_flip_before_nms():
    """Two views of a 10x20 image: as is, and flipped left-right. The flipped view's copy of the
    first object is suppressed; its second object comes back with box and mask un-flipped."""
    import mmdet_plugin  # noqa: F401
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    from mmdet_plugin.tta import InstanceSegTTAModel

    def view(flip, boxes, scores, regions):
        sample = DetDataSample(metainfo=dict(ori_shape=(10, 20), flip=flip,
                                             flip_direction='horizontal' if flip else None))
        masks = torch.zeros(len(boxes), 10, 20, dtype=torch.bool)
        for m, (y0, y1, x0, x1) in zip(masks, regions):
            m[y0:y1, x0:x1] = True
        sample.pred_instances = InstanceData(
            bboxes=torch.tensor(boxes, dtype=torch.float32), scores=torch.tensor(scores),
            labels=torch.zeros(len(boxes), dtype=torch.long), masks=masks)
        return sample

    plain = view(False, [[2, 2, 6, 8]], [0.9], [(2, 8, 2, 6)])
    flipped = view(True, [[14, 2, 18, 8], [0, 0, 4, 4]], [0.8, 0.7], [(2, 8, 14, 18), (0, 4, 0, 4)])
    class Detector(torch.nn.Module):  # BaseTTAModel only checks for test_step
        def test_step(self, data):
            raise NotImplementedError

    tta = InstanceSegTTAModel(module=Detector(), tta_cfg=dict(
        nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
    (merged,) = tta.merge_preds([[plain, flipped]])
    pred = merged.pred_instances
    assert pred.scores.tolist() == pytest.approx([0.9, 0.7])
    assert pred.bboxes.tolist() == [[2, 2, 6, 8], [16, 0, 20, 4]]
    expected = torch.zeros(2, 10, 20, dtype=torch.bool)
    expected[0, 2:8, 2:6] = True
    expected[1, 0:4, 16:20] = True
    assert torch.equal(pred.masks, expected)
