"""demo/image_demo.py and tools/convert_checkpoint.py, run for real on CPU.

The demo draws predictions of a RetinaNet trained for two iterations by tools/train.py, of freshly
initialised Semantic FPN and Mask R-CNN models, and of a Mask R-CNN saved in the PoolFormer
paper's release layout. The converter round-trips every checkpoint layout users hold; official
keys come from mmpretrain's PoolFormer and timm keys from timm's own ``checkpoint_filter_fn``, so
the expected outputs never pass through this toolkit's conversion code.
"""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backbone_helpers import record_calls
from conftest import CPU_ENV as ENV
from conftest import REPO, build_model, load_script
from metaformer_dense import MetaFormerBackbone
from metaformer_dense.checkpoint import read_checkpoint

DET_TOOLS_CFG = REPO / 'tests/configs/retinanet_poolformer_s12_tools.py'
SEG_CFG = REPO / 'configs/demo/semantic_fpn_poolformer_s12_tiny.py'
MASK_CFG = REPO / 'configs/demo/mask_rcnn_poolformer_s12_tiny.py'
COCO_VAL = REPO / 'data/tiny_coco/val'
ADE_VAL = REPO / 'data/tiny_ade20k/images/validation'
X = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
# Untrained models score below the configs' own thresholds: keep every prediction.
KEEP_ALL = ['--score-thr', '0', '--cfg-options', 'model.test_cfg.score_thr=0.0']
demo_tool = load_script('demo/image_demo')
convert_tool = load_script('tools/convert_checkpoint')


def save_fresh_model(config: Path, path: Path) -> dict:
    """Save a freshly initialised model in the runner's checkpoint layout; return its state."""
    from mmengine.registry import DATASETS, init_default_scope
    cfg, model = build_model(config)
    init_default_scope(cfg.default_scope)
    dataset = dict(cfg.test_dataloader.dataset, lazy_init=True)
    meta = dict(dataset_meta=DATASETS.build(dataset).metainfo)
    state = model.state_dict()
    torch.save(dict(meta=meta, state_dict=state), path)
    return state


def randomised_mmpretrain_s12(seed: int = 0):
    """mmpretrain's PoolFormer-S12 (official key names) with weights that make every block count."""
    from mmpretrain.models.backbones import PoolFormer
    ref = PoolFormer(arch='s12', out_indices=(0, 2, 4, 6))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if 'layer_scale' in name:  # ImageNet init (1e-5) would hide the blocks
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif 'norm' in name and name.endswith('weight'):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    ref.eval()
    return ref


def reference_outputs(ref, with_norms: bool = True):
    """mmpretrain's outputs; without the output norms (ImageNet files lack them) those are reset
    to their fresh initialisation, which is what this toolkit starts them from."""
    if not with_norms:
        ref = randomised_mmpretrain_s12()
        for i in (0, 2, 4, 6):
            getattr(ref, f'norm{i}').reset_parameters()
    with torch.no_grad():
        return ref(X)


def backbone_outputs(checkpoint: Path):
    model = MetaFormerBackbone('poolformer_s12',
                               init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint)))
    model.init_weights()
    with torch.no_grad():
        return model.eval()(X)


def assert_same_outputs(outs, ref_outs):
    assert len(outs) == len(ref_outs) == 4
    for out, ref in zip(outs, ref_outs):
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def timm_state_dict(official: dict) -> dict:
    """timm's own conversion of official PoolFormer weights (classifier keys included)."""
    import timm
    from timm.models.metaformer import checkpoint_filter_fn
    model = timm.create_model('poolformer_s12')
    model.load_state_dict(checkpoint_filter_fn(official, model), strict=True)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- demo
@pytest.fixture(scope='module')
def trained_retinanet(tmp_path_factory) -> Path:
    """A RetinaNet-S12 runner checkpoint after two training iterations of tools/train.py."""
    work = tmp_path_factory.mktemp('retinanet')
    proc = subprocess.run(
        [sys.executable, 'tools/train.py', str(DET_TOOLS_CFG), '--work-dir', str(work),
         '--cfg-options', 'train_cfg.max_iters=2', 'train_cfg.val_interval=100'],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / 'iter_2.pth'


def test_demo_cli_draws_detections_of_a_trained_checkpoint(trained_retinanet, tmp_path):
    folder = tmp_path / 'imgs'
    folder.mkdir()
    for name in ('000001.jpg', '000002.jpg'):
        (folder / name).write_bytes((COCO_VAL / name).read_bytes())
    out = tmp_path / 'vis'
    proc = subprocess.run(
        [sys.executable, 'demo/image_demo.py', str(folder), str(COCO_VAL / '000003.jpg'),
         str(DET_TOOLS_CFG), str(trained_retinanet), '--out-dir', str(out), '--device', 'cpu',
         *KEEP_ALL], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ['000001.png', '000002.png', '000003.png']
    assert 'detections >= 0.0' in proc.stdout
    for name in ('000001', '000002', '000003'):
        source = cv2.imread(str(COCO_VAL / f'{name}.jpg'))
        drawn = cv2.imread(str(out / f'{name}.png'))
        assert drawn.shape == source.shape
        assert (drawn != source).any(axis=2).mean() > 0.01  # boxes and labels are drawn

    # Above every score nothing is drawn: the picture is the image itself, pixel for pixel.
    demo_tool.main([str(COCO_VAL / '000003.jpg'), str(DET_TOOLS_CFG), str(trained_retinanet),
                    '--out-dir', str(tmp_path / 'none'), '--score-thr', '1.01'])
    untouched = cv2.imread(str(tmp_path / 'none/000003.png'))
    np.testing.assert_array_equal(untouched, cv2.imread(str(COCO_VAL / '000003.jpg')))


def test_demo_draws_segmentation(tmp_path, monkeypatch):
    save_fresh_model(SEG_CFG, tmp_path / 'fpn.pth')
    image = ADE_VAL / 'ADE_val_00000001.jpg'
    loads = record_calls(monkeypatch, MetaFormerBackbone, '_load_from_state_dict')
    demo_tool.main([str(image), str(SEG_CFG), str(tmp_path / 'fpn.pth'),
                    '--out-dir', str(tmp_path / 'vis'), '--opacity', '0.5'])
    assert len(loads) == 1  # the checkpoint is loaded once (strictly), not again by mmseg
    source = cv2.imread(str(image))
    drawn = cv2.imread(str(tmp_path / 'vis/ADE_val_00000001.png'))
    assert drawn.shape == source.shape  # the label map is drawn at the image's own size
    assert (drawn != source).any(axis=2).mean() > 0.5  # every pixel gets a class colour


def test_help_of_both_tools():
    for tool in ('demo/image_demo', 'tools/convert_checkpoint'):
        proc = subprocess.run([sys.executable, f'{tool}.py', '--help'], cwd=REPO, env=ENV,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and '.safetensors' in proc.stdout


# ----------------------------------------------------------------------------- paper release
def test_paper_release_mask_rcnn_runs_converts_and_keeps_its_heads(tmp_path, capsys, monkeypatch):
    """A Mask R-CNN in the mmdet 2.x release layout: ``backbone.`` + official names with output
    norms ``norm0/2/4/6``, class names in ``meta['CLASSES']``."""
    _, model = build_model(MASK_CFG)
    ref = randomised_mmpretrain_s12()
    heads = {k: v for k, v in model.state_dict().items() if not k.startswith('backbone.')}
    release = {**{f'backbone.{k}': v for k, v in ref.state_dict().items()}, **heads}
    src = tmp_path / 'mask_rcnn_poolformer_s12_release.pth'
    torch.save(dict(meta=dict(CLASSES=('circle', 'square', 'triangle'),
                              mmdet_version='2.19.0'), state_dict=release), src)

    loads = record_calls(monkeypatch, MetaFormerBackbone, '_load_from_state_dict')
    demo_tool.main([str(COCO_VAL / '000001.jpg'), str(MASK_CFG), str(src),
                    '--out-dir', str(tmp_path / 'vis'), '--score-thr', '0', '--cfg-options',
                    'model.test_cfg.rcnn.score_thr=0.0'])
    assert (tmp_path / 'vis/000001.png').is_file()
    assert len(loads) == 1  # the checkpoint is loaded once (strictly), not again by mmdet

    dst = tmp_path / 'mask_rcnn.safetensors'
    convert_tool.main([str(src), str(dst)])  # arch found from the weights
    report = capsys.readouterr().out
    assert 'poolformer_official layout, whole model, arch poolformer_s12' in report
    assert 'normN.weight -> out_norms.N.weight (x4)' in report
    assert f'kept {len(heads)} non-backbone keys unchanged' in report
    converted = read_checkpoint(str(dst))
    for key, value in heads.items():
        assert torch.equal(converted[key], value), key
    assert {k for k in converted if k.startswith('backbone.')} == {
        k for k in model.state_dict() if k.startswith('backbone.')}

    model.load_state_dict(converted, strict=True)
    with torch.no_grad():
        assert_same_outputs(model.backbone(X), reference_outputs(ref))
    # The demo reads the converted safetensors file too, class names from its header.
    demo_tool.main([str(COCO_VAL / '000001.jpg'), str(MASK_CFG), str(dst),
                    '--out-dir', str(tmp_path / 'vis2')])
    assert (tmp_path / 'vis2/000001.png').is_file()


# ----------------------------------------------------------------------------- converter
def _write_source(fmt: str, ref, path: Path) -> bool:
    """Write ``ref``'s weights in layout ``fmt``; return whether the output norms are included."""
    official = {k: v for k, v in ref.state_dict().items() if not k.startswith('norm')}
    classifier = {'norm.weight': torch.ones(512), 'norm.bias': torch.zeros(512),
                  'head.weight': torch.zeros(1000, 512), 'head.bias': torch.zeros(1000)}
    if fmt == 'official':  # poolformer_s12.pth.tar: a raw state dict, classifier included
        torch.save({**official, **classifier}, path)
        return False
    if fmt == 'mmpretrain':  # backbone. prefix, output norms norm0/2/4/6
        torch.save(dict(meta=dict(mmpretrain_version='1.2.0'),
                        state_dict={f'backbone.{k}': v for k, v in ref.state_dict().items()}),
                   path)
        return True
    timm_sd = timm_state_dict({**official, **classifier})
    if fmt == 'timm_safetensors':
        save_file(timm_sd, str(path))
    else:
        torch.save(timm_sd, path)
    return False


@pytest.mark.parametrize('fmt,suffix', [('official', '.pth.tar'), ('mmpretrain', '.pth'),
                                        ('timm_pth', '.pth'), ('timm_safetensors', '.safetensors')])
@pytest.mark.parametrize('dst_suffix', ['.pth', '.safetensors'])
def test_convert_round_trips_each_layout(fmt, suffix, dst_suffix, tmp_path, capsys):
    ref = randomised_mmpretrain_s12()
    src = tmp_path / f'src{suffix}'
    with_norms = _write_source(fmt, ref, src)
    expected = reference_outputs(ref, with_norms=with_norms)
    dst = tmp_path / f'converted{dst_suffix}'
    convert_tool.main([str(src), str(dst), '--arch', 's12'])
    report = capsys.readouterr().out
    assert f'wrote {dst}' in report

    # The result is this toolkit's layout and loads into the backbone with the same outputs.
    raw = read_checkpoint(str(dst))
    state = raw['state_dict'] if dst_suffix == '.pth' else raw
    if dst_suffix == '.pth':
        assert raw['meta']['arch'] == 'poolformer_s12'
    own = MetaFormerBackbone('poolformer_s12').state_dict()
    norms = {k for k in own if k.startswith('out_norms.')}
    assert set(state) == (set(own) if with_norms else set(own) - norms)
    assert_same_outputs(backbone_outputs(dst), expected)
    if with_norms:
        assert 'missing vs poolformer_s12 (0' in report
    else:
        assert 'missing vs poolformer_s12 (8, freshly initialised when loaded): out_norms.0.*' \
            in report
        assert "'head." in report  # classifier dropped, and said so

    # Converting the converted file changes nothing.
    again = tmp_path / f'again{dst_suffix}'
    convert_tool.main([str(dst), str(again), '--arch', 'poolformer_s12'])
    assert "renamed: none (already this toolkit's names)" in capsys.readouterr().out
    twice = read_checkpoint(str(again))
    twice = twice['state_dict'] if dst_suffix == '.pth' else twice
    assert twice.keys() == state.keys()
    assert all(torch.equal(twice[k], state[k]) for k in state)


def test_convert_refuses_another_arch_and_keeps_existing_output(tmp_path):
    ref = randomised_mmpretrain_s12()
    src = tmp_path / 'official.pth.tar'
    _write_source('official', ref, src)
    with pytest.raises(SystemExit, match=r"lacks 120 backbone weights of poolformer_s24"):
        convert_tool.main([str(src), str(tmp_path / 'out.pth'), '--arch', 'poolformer_s24'])
    with pytest.raises(SystemExit, match=r'does not fit poolformer_m36: \d+ shape mismatches'):
        convert_tool.main([str(src), str(tmp_path / 'out.pth'), '--arch', 'm36'])
    assert not (tmp_path / 'out.pth').exists()
    (tmp_path / 'out.pth').write_bytes(b'keep me')
    with pytest.raises(SystemExit, match='exists; pass --force'):
        convert_tool.main([str(src), str(tmp_path / 'out.pth')])
    assert (tmp_path / 'out.pth').read_bytes() == b'keep me'
