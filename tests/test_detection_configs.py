"""Detection configs: they build the paper's models, and the tiny demo configs train and evaluate.

Param counts are the PoolFormer paper's (RetinaNet / Mask R-CNN on COCO, 1x); a config whose
built model differs by more than 0.05 M is not the paper's model. The demo configs run one real
mmengine training iteration and one COCO evaluation on the carried tiny dataset, on CPU.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmengine.config import Config
from mmengine.registry import init_default_scope
from PIL import Image

from benchmarks.published import POOLFORMER_COCO
from conftest import REPO, reported_metric

CONFIGS = REPO / 'configs'
TINY = REPO / 'data' / 'tiny_coco'

# (config stem, paper params in M); None: no published count, build + shape checks only.
METHODS = {'retinanet': 'RetinaNet', 'mask_rcnn': 'Mask R-CNN'}
ARCHS = ('poolformer_s12', 'poolformer_s24', 'poolformer_s36', 'poolformer_m36',
         'poolformer_m48', 'convformer_s18', 'caformer_s18',
         *(f'{family}_{size}' for family in ('identityformer', 'randformer')
           for size in ('s12', 's24', 's36', 'm36', 'm48')))
DETECTORS = [(f'{stem}_{arch}', POOLFORMER_COCO.get((method, arch), {}).get('params'))
             for stem, method in METHODS.items() for arch in ARCHS]
DEMOS = ['retinanet_poolformer_s12_tiny', 'mask_rcnn_poolformer_s12_tiny']


def load(stem: str) -> Config:
    sub = 'demo/' if stem.endswith('_tiny') else ''
    return Config.fromfile(str(CONFIGS / f'{sub}{stem}.py'))


def build(cfg: Config) -> torch.nn.Module:
    from mmdet.registry import MODELS

    init_default_scope('mmdet')
    return MODELS.build(cfg.model)


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('stem,paper_m', DETECTORS, ids=[d[0] for d in DETECTORS])
def test_config_builds_the_papers_model(stem, paper_m):
    cfg = load(stem)
    retina = stem.startswith('retinanet')
    # The paper's recipe, as the config resolves it after inheritance.
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 1e-4 if retina else 2e-4, 1e-4)
    assert cfg.train_cfg.max_epochs == 12
    steps = [s for s in cfg.param_scheduler if s.type == 'MultiStepLR'][0]
    warmup = [s for s in cfg.param_scheduler if s.type == 'LinearLR'][0]
    assert steps.milestones == [8, 11] and (warmup.end, warmup.start_factor) == (500, 0.001)
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 16
    resize = [t for t in cfg.train_pipeline if t.type == 'Resize'][0]
    assert (resize.scale, resize.keep_ratio) == ((1333, 800), True)
    assert [t.prob for t in cfg.train_pipeline if t.type == 'RandomFlip'] == [0.5]
    bb = cfg.model.backbone
    assert bb.type == 'MetaFormer'
    assert bb.arch in stem
    # ImageNet init from a user-set path, named after the arch (a copy-paste slip shows here).
    assert bb.init_cfg.type == 'Pretrained' and f'/{bb.arch}.pth' in bb.init_cfg.checkpoint
    neck = cfg.model.neck
    assert (neck.get('start_level', 0), neck.num_outs) == (0, 5)  # FPN's default start is 0
    if retina:
        assert bb.out_indices == (1, 2, 3) and neck.add_extra_convs == 'on_input'

    model = build(cfg)  # must need no checkpoint file or network: init_weights is not called
    # The FPN's inputs are exactly what the backbone emits.
    assert list(model.neck.in_channels) == list(model.backbone.out_channels)
    n_params = sum(p.numel() for p in model.parameters())
    if paper_m is not None:
        assert abs(n_params / 1e6 - paper_m) <= 0.05, \
            f'{stem}: {n_params / 1e6:.3f} M parameters, the paper has {paper_m} M'
    else:
        # Widths and strides of the five FPN levels on an input that is not a multiple of 32.
        model.eval()
        with torch.no_grad():
            feats = model.extract_feat(torch.randn(1, 3, 96, 80))
        assert len(feats) == 5
        assert all(f.shape[1] == 256 for f in feats)
        first = 8 if retina else 4
        assert [tuple(f.shape[2:]) for f in feats] == [
            (-(-96 // (first * 2**i)), -(-80 // (first * 2**i))) for i in range(5)]
        assert all(torch.isfinite(f).all() for f in feats)


def test_retinanet_fpn_matches_the_papers_parameter_names():
    """The paper's FPN took 4 inputs with start_level=1; ours takes 3 with start_level=0.

    Both give lateral/fpn convs indexed 0..2 over stages 1..3 plus the extra convs, so the
    paper's released RetinaNet checkpoints map key for key onto this model.
    """
    from mmdet.models.necks import FPN

    ours = build(load('retinanet_poolformer_s12')).neck
    papers = FPN(in_channels=[64, 128, 320, 512], out_channels=256, start_level=1,
                 add_extra_convs='on_input', num_outs=5)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in papers.state_dict().items()}


# ---------------------------------------------------------------------------------------------
def tiny_run_cfg(stem: str, work_dir: Path) -> Config:
    """The demo config cut to one training iteration (batch 2) and 2 validation images."""
    cfg = load(stem)
    cfg.work_dir = str(work_dir)
    # mmengine keeps one visualizer per name for the whole process; a run of its own writes to
    # its own work dir, not to an earlier test's (deleted) one.
    cfg.visualizer.name = f'visualizer_{work_dir.name}'
    cfg.train_dataloader.batch_size = 2
    cfg.train_dataloader.dataset.indices = 2
    cfg.train_dataloader.sampler = dict(type='DefaultSampler', shuffle=False)
    cfg.val_dataloader.dataset.indices = 2
    cfg.test_dataloader = copy.deepcopy(cfg.val_dataloader)
    cfg.train_cfg.max_epochs = 1
    cfg.train_cfg.val_interval = 1
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.interval = 1
    # An untrained detector scores everything low; keep all boxes so the metric has input.
    if 'rcnn' in cfg.model.test_cfg:
        cfg.model.test_cfg.rcnn.score_thr = 0.0
        cfg.model.test_cfg.rcnn.max_per_img = 20
    else:
        cfg.model.test_cfg.score_thr = 0.0
        cfg.model.test_cfg.max_per_img = 20
    return cfg


@pytest.mark.parametrize('stem', DEMOS)
def test_demo_config_trains_and_evaluates(stem, tmp_path):
    from mmengine.runner import Runner

    cfg = tiny_run_cfg(stem, tmp_path)
    assert cfg.model.backbone.init_cfg is None  # runs without any download
    runner = Runner.from_cfg(cfg)
    before = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}
    runner.train()
    hub = runner.message_hub
    assert runner.iter == 1
    loss = hub.get_scalar('train/loss').current()
    assert np.isfinite(loss) and loss > 0
    after = runner.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before
               if k.startswith('backbone.')), 'training did not update the backbone'
    metrics = {k: v.current() for k, v in hub.log_scalars.items() if k.startswith('val/coco/')}
    reported_metric(metrics, 'val/coco/bbox_mAP')
    if 'mask_rcnn' in stem:
        reported_metric(metrics, 'val/coco/segm_mAP')
    assert (tmp_path / 'epoch_1.pth').is_file()


# ---------------------------------------------------------------------------------------------
def test_tiny_coco_is_small_and_reads_in_mmdet():
    from mmdet.datasets import CocoDataset

    files = [p for p in TINY.rglob('*') if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 1_500_000
    assert max(p.stat().st_size for p in files if p.suffix == '.jpg') < 20_000
    metainfo = dict(classes=('circle', 'square', 'triangle'))
    for split, n_img in (('train', 48), ('val', 16)):
        ds = CocoDataset(data_root=str(TINY), ann_file=f'annotations/instances_{split}.json',
                         data_prefix=dict(img=f'{split}/'), metainfo=metainfo, pipeline=[])
        assert len(ds) == n_img
        for info in ds:
            assert Path(info['img_path']).is_file()
            for inst in info['instances']:
                x1, y1, x2, y2 = inst['bbox']
                assert 0 <= x1 < x2 <= info['width'] and 0 <= y1 < y2 <= info['height']
                assert inst['bbox_label'] in (0, 1, 2) and len(inst['mask'][0]) >= 6
    labels = {a['category_id'] for a in
              json.loads((TINY / 'annotations' / 'instances_val.json').read_text())['annotations']}
    assert labels == {1, 2, 3}


def test_tiny_coco_generator_reproduces_the_carried_files(tmp_path):
    out = tmp_path / 'tiny_coco'
    subprocess.run([sys.executable, str(REPO / 'tools' / 'make_tiny_coco.py'), '--out', str(out)],
                   check=True, capture_output=True)
    for split in ('train', 'val'):
        name = f'annotations/instances_{split}.json'
        assert (out / name).read_bytes() == (TINY / name).read_bytes(), f'{name} differs'
        new = sorted((out / split).glob('*.jpg'))
        assert [p.name for p in new] == sorted(p.name for p in (TINY / split).glob('*.jpg'))
        for p in new:
            # JPEG bytes can differ between libjpeg builds; the decoded pixels may not.
            a = np.asarray(Image.open(p), dtype=np.int16)
            b = np.asarray(Image.open(TINY / split / p.name), dtype=np.int16)
            assert a.shape == b.shape and np.abs(a - b).mean() < 1.0, p.name


def test_full_coco_config_without_data_fails_at_once_naming_the_fix(tmp_path):
    # tests/test_tools.py checks the RetinaNet config; this checks the Mask R-CNN family, run from
    # an empty directory so the configs' relative data/coco/ is absent.
    proc = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'train.py'),
         str(CONFIGS / 'mask_rcnn_poolformer_s12.py')],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    assert "'data/coco/'" in proc.stderr
    assert '--cfg-options train_dataloader.dataset.data_root=' in proc.stderr
    assert not (tmp_path / 'work_dirs').exists()  # stopped before building the Runner
