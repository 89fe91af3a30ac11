"""Semantic FPN + MetaFormer on ADE20K: configs, param counts, tiny data, training, paper checkpoints."""
from __future__ import annotations

import copy
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmarks.published import POOLFORMER_ADE20K
from conftest import REPO, reported_metric

CONFIGS = sorted(glob.glob(os.path.join(REPO, 'configs', 'semantic_fpn_*.py')))
DEMO = os.path.join(REPO, 'configs', 'demo', 'semantic_fpn_poolformer_s12_tiny.py')
TINY = os.path.join(REPO, 'data', 'tiny_ade20k')
# Whole-segmentor parameters (M) published with the PoolFormer paper's ADE20K results.
PAPER_PARAMS = {arch: v['params'] for (method, arch), v in POOLFORMER_ADE20K.items()
                if method == 'Semantic FPN'}
PROBE = 64  # side of the input each built model segments

# Builds every config in a fresh interpreter in which mmdet and mmpretrain cannot be imported,
# counts parameters and segments a PROBE x PROBE image; prints one JSON report.
_BLOCKED_BUILD = r'''
import importlib.abc, json, sys
BLOCKED = ('mmdet', 'mmpretrain', 'mmcls')

class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ModuleNotFoundError(f'No module named {name!r} (blocked by the test)', name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
for mod in BLOCKED:
    try:
        __import__(mod)
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit(f'{mod} is still importable: the blocker does not work')

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.utils import import_modules_from_strings
from mmseg.registry import MODELS

report = {}
for path in sys.argv[2:]:
    cfg = Config.fromfile(path)
    import_modules_from_strings(**cfg.custom_imports)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        out = model.predict(torch.rand(1, 3, int(sys.argv[1]), int(sys.argv[1])))[0]
    report[path] = dict(arch=cfg.model.backbone.arch,
                        params=sum(p.numel() for p in model.parameters()),
                        backbone_channels=list(model.backbone.out_channels),
                        neck_channels=list(cfg.model.neck.in_channels),
                        seg_logits=list(out.seg_logits.data.shape),
                        pred=list(out.pred_sem_seg.data.shape))
leaked = sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED)
print('REPORT' + json.dumps(dict(models=report, leaked=leaked)))
'''


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
    return env


@pytest.fixture(scope='module')
def blocked_build():
    configs = CONFIGS + [DEMO]
    proc = subprocess.run([sys.executable, '-c', _BLOCKED_BUILD, str(PROBE), *configs], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith('REPORT')][-1]
    return json.loads(line[len('REPORT'):])


def _config(path: str):
    from mmengine.config import Config
    return Config.fromfile(path)


def _build(cfg):
    from mmengine.registry import init_default_scope
    from mmengine.utils import import_modules_from_strings
    from mmseg.registry import MODELS
    import_modules_from_strings(**cfg.custom_imports)
    init_default_scope('mmseg')
    return MODELS.build(cfg.model)


# ------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------
def test_expected_configs_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    expected = {f'semantic_fpn_{a}.py' for a in PAPER_PARAMS} | {
        'semantic_fpn_convformer_s18.py', 'semantic_fpn_caformer_s18.py'}
    assert expected <= names
    assert os.path.isfile(DEMO)


@pytest.mark.parametrize('path', CONFIGS + [DEMO], ids=os.path.basename)
def test_config_builds_and_segments_without_mmdet_or_mmpretrain(blocked_build, path):
    assert blocked_build['leaked'] == []
    entry = blocked_build['models'][path]
    assert entry['seg_logits'] == [150, PROBE, PROBE]
    assert entry['pred'] == [1, PROBE, PROBE]
    assert entry['backbone_channels'] == entry['neck_channels']


@pytest.mark.parametrize('arch', sorted(PAPER_PARAMS))
def test_param_counts_match_paper(blocked_build, arch):
    path = os.path.join(REPO, 'configs', f'semantic_fpn_{arch}.py')
    params = blocked_build['models'][path]['params'] / 1e6
    assert abs(params - PAPER_PARAMS[arch]) <= 0.05, f'{arch}: {params:.3f} M vs paper {PAPER_PARAMS[arch]} M'


def test_s12_config_is_the_paper_recipe():
    cfg = _config(os.path.join(REPO, 'configs', 'semantic_fpn_poolformer_s12.py'))
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 2e-4, 1e-4)
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    [poly] = cfg.param_scheduler
    assert (poly.type, poly.power, poly.eta_min, poly.end) == ('PolyLR', 0.9, 0.0, 40000)
    assert cfg.train_cfg.max_iters == 40000
    assert cfg.train_dataloader.batch_size == 4  # x 8 GPUs = 32
    assert cfg.auto_scale_lr.base_batch_size == 32
    train = {t.type: t for t in cfg.train_dataloader.dataset.pipeline}
    assert train['RandomCrop'].crop_size == (512, 512) and train['RandomCrop'].cat_max_ratio == 0.75
    assert train['RandomResize'].scale == (2048, 512) and train['RandomResize'].ratio_range == (0.5, 2.0)
    assert 'PhotoMetricDistortion' in train and train['RandomFlip'].prob == 0.5
    test = [t.type for t in cfg.test_dataloader.dataset.pipeline]
    assert test.index('Resize') < test.index('ResizeToMultiple')
    test_cfg = {t.type: t for t in cfg.val_dataloader.dataset.pipeline}
    assert test_cfg['Resize'].scale == (2048, 512) and test_cfg['Resize'].keep_ratio
    assert test_cfg['ResizeToMultiple'].size_divisor == 32
    m = cfg.model
    assert m.backbone.type == 'MetaFormer' and m.backbone.out_indices == (0, 1, 2, 3)
    assert m.backbone.init_cfg == dict(
        type='Pretrained',
        checkpoint='https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s12.pth.tar')
    assert m.pretrained is None
    assert m.neck.in_channels == [64, 128, 320, 512] and m.neck.num_outs == 4
    assert (m.decode_head.channels, m.decode_head.num_classes, m.decode_head.dropout_ratio) == (128, 150, 0.1)
    assert cfg.custom_imports == dict(imports=['mmseg_plugin'], allow_failed_imports=False)


def test_demo_config_only_shrinks_data_and_schedule():
    full = _config(os.path.join(REPO, 'configs', 'semantic_fpn_poolformer_s12.py'))
    demo = _config(DEMO)
    # Same model apart from the backbone init and the padding size.
    fm, dm = copy.deepcopy(full.model.to_dict()), copy.deepcopy(demo.model.to_dict())
    for m in (fm, dm):
        m['backbone'].pop('init_cfg')
        m['data_preprocessor'].pop('size')
    assert fm == dm and demo.model.backbone.init_cfg is None
    assert demo.optim_wrapper == full.optim_wrapper
    assert demo.train_dataloader.dataset.data_root == 'data/tiny_ade20k'
    assert [t.type for t in demo.train_dataloader.dataset.pipeline] == \
        [t.type for t in full.train_dataloader.dataset.pipeline]
    assert demo.param_scheduler[0].end == demo.train_cfg.max_iters


# ------------------------------------------------------------------------------------------------
# Tiny dataset
# ------------------------------------------------------------------------------------------------
def _files(root):
    return sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, '*', '*', '*')))


def test_tiny_ade20k_regenerates_identically(tmp_path):
    out = tmp_path / 'tiny'
    subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'make_tiny_ade20k.py'), '--out', str(out)],
                   check=True, capture_output=True, env=_env())
    assert _files(TINY) == _files(out) and len(_files(out)) == 2 * (32 + 8)
    for rel in _files(TINY):
        with open(os.path.join(TINY, rel), 'rb') as a, open(out / rel, 'rb') as b:
            assert a.read() == b.read(), f'{rel} differs: re-run tools/make_tiny_ade20k.py and commit'


def test_tiny_ade20k_reads_with_mmseg_ade20k_dataset():
    from mmengine.registry import init_default_scope
    from mmseg.datasets import ADE20KDataset
    init_default_scope('mmseg')  # the pipeline's LoadAnnotations is mmseg's
    seen = set()
    for split, n in (('training', 32), ('validation', 8)):
        ds = ADE20KDataset(data_root=TINY, data_prefix=dict(img_path=f'images/{split}',
                                                            seg_map_path=f'annotations/{split}'),
                           pipeline=[dict(type='LoadImageFromFile'),
                                     dict(type='LoadAnnotations', reduce_zero_label=True)])
        assert len(ds) == n
        for i in range(n):
            item = ds[i]
            assert item['img'].shape[:2] == item['gt_seg_map'].shape
            assert 128 <= min(item['img'].shape[:2]) and max(item['img'].shape[:2]) <= 256
            seen |= set(np.unique(item['gt_seg_map']).tolist())
    names = ADE20KDataset.METAINFO['classes']
    labelled = sorted(names[c] for c in seen - {255})
    assert labelled == ['building', 'grass', 'road', 'sky', 'tree', 'water']
    assert 255 in seen  # the unlabelled clutter became the ignore index


# ------------------------------------------------------------------------------------------------
# Training and evaluation with the real Runner
# ------------------------------------------------------------------------------------------------
def test_demo_trains_one_iteration_and_evaluates(tmp_path):
    from mmengine.runner import Runner
    cfg = _config(DEMO)
    cfg.work_dir = str(tmp_path)
    cfg.train_cfg.max_iters = 1
    cfg.train_cfg.val_interval = 1
    cfg.param_scheduler[0].end = 1
    cfg.default_hooks.checkpoint.interval = 1
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
    runner = Runner.from_cfg(cfg)
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    runner.train()
    after = runner.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith('backbone.') for k in changed) and any(k.startswith('decode_head.') for k in changed)
    scalars = {k: v.current() for k, v in runner.message_hub.log_scalars.items()}
    reported_metric(scalars, 'val/mIoU')
    assert os.path.isfile(tmp_path / 'iter_1.pth')


# ------------------------------------------------------------------------------------------------
# A segmentor checkpoint in the paper's release format (mmseg 0.x: official backbone names)
# ------------------------------------------------------------------------------------------------
def test_paper_release_checkpoint_loads_strictly_and_segments(tmp_path):
    from mmengine.runner import load_checkpoint
    from mmpretrain.models.backbones import PoolFormer
    from mmseg.apis import inference_model, init_model
    from mmseg.datasets import ADE20KDataset

    torch.manual_seed(0)
    reference = PoolFormer(arch='s12', out_indices=(0, 2, 4, 6))
    reference.eval()  # (mmpretrain's PoolFormer.train() returns None, so .eval() cannot be chained)
    with torch.no_grad():  # move the near-identity inits so that a wrong mapping shows in outputs
        for name, p in reference.named_parameters():
            if 'layer_scale' in name or 'norm' in name:
                p.add_(0.2 * torch.randn_like(p))
    donor = _build(_config(DEMO))  # neck / decode head as mmseg names them
    state = {f'backbone.{k}': v for k, v in reference.state_dict().items()}
    assert 'backbone.patch_embed.proj.weight' in state and 'backbone.network.1.proj.weight' in state
    assert 'backbone.network.0.0.layer_scale_1' in state and 'backbone.norm6.weight' in state
    state.update({k: v for k, v in donor.state_dict().items() if not k.startswith('backbone.')})
    meta = dict(mmseg_version='0.20.2', CLASSES=ADE20KDataset.METAINFO['classes'],
                PALETTE=ADE20KDataset.METAINFO['palette'])
    path = tmp_path / 'fpn_poolformer_s12_ade20k.pth'
    torch.save(dict(meta=meta, state_dict=state), path)

    model = init_model(DEMO, device='cpu')
    load_checkpoint(model, str(path), map_location='cpu', strict=True)
    model.eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ours, theirs = model.backbone(x), reference(x)
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for k, v in donor.state_dict().items():
        if not k.startswith('backbone.'):
            assert torch.equal(model.state_dict()[k], v), k

    img = os.path.join(TINY, 'images', 'validation', 'ADE_val_00000001.jpg')
    result = inference_model(model, img)
    pred = result.pred_sem_seg.data
    assert tuple(pred.shape) == (1, *result.ori_shape) and 0 <= pred.min() and pred.max() < 150


# ------------------------------------------------------------------------------------------------
# Missing ADE20K
# ------------------------------------------------------------------------------------------------
def test_full_config_without_ade20k_names_the_expected_path(tmp_path):
    # Run from an empty folder so that the config's relative data root cannot exist.
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'train.py'),
                           os.path.join(REPO, 'configs', 'semantic_fpn_poolformer_s12.py'),
                           '--work-dir', str(tmp_path / 'work')],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert 'data/ade/ADEChallengeData2016' in text
    assert 'Traceback' not in text, text[-3000:]


def test_segmentor_pretrained_reaches_the_backbone(tmp_path):
    # mmseg's older convention: EncoderDecoder(pretrained=PATH) hands PATH to the backbone,
    # which reads it as init_cfg=dict(type='Pretrained', checkpoint=PATH).
    from metaformer_dense import MetaFormerBackbone
    cfg = _config(DEMO)
    source = MetaFormerBackbone(cfg.model.backbone.arch, out_indices=cfg.model.backbone.out_indices)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    path = str(tmp_path / 'backbone.pth')
    torch.save(source.state_dict(), path)
    cfg.model.backbone.pop('init_cfg', None)
    cfg.model.pretrained = path
    with pytest.warns(FutureWarning, match='pretrained=.* is deprecated'):
        model = _build(cfg)
    assert model.backbone.init_cfg == dict(type='Pretrained', checkpoint=path)
    model.init_weights()
    for name, value in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], value), name
