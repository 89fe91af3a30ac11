"""Our models in a user's own script: mmdet's and mmseg's own APIs, run outside this repository.

A script in a temporary folder uses ``init_detector`` + ``inference_detector``, ``DetInferencer``
and ``init_model`` + ``inference_model`` with this toolkit's full configs and checkpoints in the
PoolFormer paper's release layout (mmdet 2.x / mmseg 0.x: ``backbone.`` + official key names,
output norms ``norm0/2/4/6``). Nothing is imported or registered beyond what the config carries.
A checkpoint of another arch must stop these non-strict loaders with an error.
"""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO

MASK_RCNN = REPO / 'configs/mask_rcnn_poolformer_s12.py'
SEM_FPN = REPO / 'configs/semantic_fpn_poolformer_s12.py'
IMAGE = REPO / 'data/tiny_coco/val/000001.jpg'

SCRIPT = '''
import sys
import torch
kind, config, checkpoint, image = sys.argv[1:5]
if kind == 'det':
    from mmdet.apis import init_detector, inference_detector
    model = init_detector(config, checkpoint, device='cpu')
    result = inference_detector(model, image)
    found = len(result.pred_instances)
elif kind == 'det-inferencer':
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model=config, weights=checkpoint, device='cpu', show_progress=False)
    model = inferencer.model
    found = len(inferencer(image, return_datasamples=True)['predictions'][0].pred_instances)
else:
    from mmseg.apis import init_model, inference_model
    model = init_model(config, checkpoint, device='cpu')
    result = inference_model(model, image)
    found = tuple(result.pred_sem_seg.data.shape)
print('STEM', float(model.backbone.stem.conv.weight.double().sum()))
print('NORM0', float(model.backbone.out_norms['0'].weight.double().sum()))
print('FOUND', found)
'''


def _release_checkpoint(config: Path, arch: str, path: Path, seed: int) -> dict:
    """The config's model with an mmpretrain PoolFormer (official names) as backbone, saved in
    the paper's release layout; returns that backbone's official state dict."""
    from mmengine.config import Config
    from mmpretrain.models.backbones import PoolFormer
    cfg = Config.fromfile(str(config))
    scope = importlib.import_module(f'{cfg.default_scope}.registry')
    cfg.model.backbone.init_cfg = None
    heads = {k: v for k, v in scope.MODELS.build(cfg.model).state_dict().items()
             if not k.startswith('backbone.')}
    torch.manual_seed(seed)
    official = PoolFormer(arch=arch, out_indices=(0, 2, 4, 6)).state_dict()
    official = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                for k, v in official.items()}
    meta = dict(mmdet_version='2.19.0') if cfg.default_scope == 'mmdet' else dict(mmseg_version='0.20.2')
    state = {**{f'backbone.{k}': v for k, v in official.items()}, **heads}
    torch.save(dict(meta=meta, state_dict=state), path)
    return official


def _run_script(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    script = tmp_path / 'my_inference.py'
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env.update(OMP_NUM_THREADS='2', PYTHONWARNINGS='ignore', CUDA_VISIBLE_DEVICES='')
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def _values(out: str) -> dict:
    return {line.split(' ', 1)[0]: line.split(' ', 1)[1] for line in out.splitlines()
            if line.startswith(('STEM ', 'NORM0 ', 'FOUND '))}


@pytest.mark.parametrize('kind', ['det', 'det-inferencer'])
def test_mmdet_apis_load_a_release_checkpoint(tmp_path, kind):
    ckpt = tmp_path / 'mask_rcnn_poolformer_s12_release.pth'
    official = _release_checkpoint(MASK_RCNN, 's12', ckpt, seed=0)
    run = _run_script(tmp_path, kind, MASK_RCNN, ckpt, IMAGE)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    got = _values(run.stdout)
    assert float(got['STEM']) == pytest.approx(float(official['patch_embed.proj.weight'].double().sum()))
    assert float(got['NORM0']) == pytest.approx(float(official['norm0.weight'].double().sum()))
    assert int(got['FOUND']) >= 0


def test_mmseg_apis_load_a_release_checkpoint(tmp_path):
    ckpt = tmp_path / 'fpn_poolformer_s12_release.pth'
    official = _release_checkpoint(SEM_FPN, 's12', ckpt, seed=1)
    run = _run_script(tmp_path, 'seg', SEM_FPN, ckpt, IMAGE)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    got = _values(run.stdout)
    assert float(got['STEM']) == pytest.approx(float(official['patch_embed.proj.weight'].double().sum()))
    assert got['FOUND'].startswith('(1, ')  # a label map of the image's size


def test_another_archs_checkpoint_is_an_error_not_a_warning(tmp_path):
    ckpt = tmp_path / 'mask_rcnn_poolformer_s24_release.pth'
    _release_checkpoint(REPO / 'configs/mask_rcnn_poolformer_s24.py', 's24', ckpt, seed=2)
    run = _run_script(tmp_path, 'det', MASK_RCNN, ckpt, IMAGE)
    assert run.returncode != 0 and 'FOUND' not in run.stdout
    assert 'CheckpointError' in run.stderr and 'poolformer_s12 does not have' in run.stderr, run.stderr[-3000:]
    assert 'is it a checkpoint for another arch?' in run.stderr
