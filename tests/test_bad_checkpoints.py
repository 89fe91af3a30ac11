"""Bad checkpoints, end to end: broken files, weights of another model, code-carrying pickles.

Every case asserts the specific error (or the specific behaviour) a user gets. Checkpoints go
through the backbone's ``init_cfg=dict(type='Pretrained')``, demo/image_demo.py and tools/test.py;
configs, annotations and the kill/resume run through tools/train.py in subprocesses. Models are
the tiny test configs (96 px images, one or two images, a few iterations).

Decided behaviours (also in the tools' docs):

* float16 / bfloat16 / float64 weights load, cast to the model's float32 (as torch's
  ``load_state_dict`` copies do); integer or bool tensors where weights are float are an error.
* Unknown keys outside the backbone's built modules are reported and ignored by the backbone's
  ``Pretrained`` init; whole-model loading in tools/test.py and demo/image_demo.py is strict.
"""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import DET_CFG, REPO, demo_error, detector_state, load_script
from conftest import run_script as run
from metaformer_dense import CheckpointError, MetaFormerBackbone

COCO = REPO / 'data/tiny_coco'
demo_tool = load_script('demo/image_demo')


def save_safetensors(state: dict, path: Path) -> None:
    # safetensors stores plain row-major tensors; the backbone keeps its weights channels-last
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def s12_backbone_state() -> dict:
    torch.manual_seed(0)
    return MetaFormerBackbone('poolformer_s12').state_dict()


def pretrained(path) -> MetaFormerBackbone:
    model = MetaFormerBackbone('poolformer_s12',
                               init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    return model


# ----------------------------------------------------------------------------- broken files
def _valid(path: Path) -> Path:
    torch.save({'meta': {}, 'state_dict': s12_backbone_state()}, path)
    return path


def _truncated(path: Path) -> Path:
    _valid(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def _random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b'')
    return path


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


BROKEN = {
    'truncated': (_truncated, r'not a readable PyTorch checkpoint; it is probably truncated'),
    'random bytes': (_random_bytes, r'is not a PyTorch checkpoint \(nor safetensors\)'),
    'empty': (_empty, r'is an empty file'),
    'directory': (_directory, r'is a directory; point it at a \.pth or \.safetensors file'),
}


@pytest.mark.parametrize('case', BROKEN)
def test_broken_checkpoint_files(case, tmp_path):
    make, message = BROKEN[case]
    path = make(tmp_path / 'model.pth')
    with pytest.raises(CheckpointError, match=message):
        pretrained(path)  # backbone init_cfg
    assert 'model.pth' in demo_error(COCO / 'val/000001.jpg', DET_CFG, path)
    with pytest.raises(SystemExit, match=message):  # the same words through the demo
        demo_tool.main([str(COCO / 'val/000001.jpg'), str(DET_CFG), str(path)])


def test_tools_test_names_a_truncated_checkpoint(tmp_path):
    path = _truncated(tmp_path / 'model.pth')
    proc = run('tools/test.py', DET_CFG, path, '--work-dir', tmp_path / 'w', ok=False)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    assert f"error: '{path}' is not a readable PyTorch checkpoint" in proc.stderr


# ----------------------------------------------------------------------------- wrong contents
def test_backbone_refuses_another_arch_and_a_partial_checkpoint(tmp_path):
    torch.save(MetaFormerBackbone('poolformer_s24').state_dict(), tmp_path / 's24.pth')
    with pytest.raises(CheckpointError, match=r'has 120 weights poolformer_s12 does not have.*'
                       r'depths \(4, 4, 12, 4\).*poolformer_s12 has depths \(2, 2, 6, 2\)'):
        pretrained(tmp_path / 's24.pth')
    torch.save(MetaFormerBackbone('poolformer_m36').state_dict(), tmp_path / 'm36.pth')
    with pytest.raises(CheckpointError, match=r'does not fit poolformer_s12: \d+ shape mismatches'):
        pretrained(tmp_path / 'm36.pth')

    state = s12_backbone_state()
    del state['stages.2.blocks.5.mlp.fc2.weight']
    torch.save(state, tmp_path / 'partial.pth')
    with pytest.raises(CheckpointError, match=r"lacks 1 backbone weights of poolformer_s12 "
                       r"\(first: \['stages.2.blocks.5.mlp.fc2.weight'\]\)"):
        pretrained(tmp_path / 'partial.pth')


def test_backbone_reports_extra_and_missing_output_norms(tmp_path):
    state = s12_backbone_state()
    imagenet = {k: v for k, v in state.items() if not k.startswith('out_norms.')}
    torch.save({**imagenet, 'extra.weight': torch.ones(3)}, tmp_path / 'extra.pth')
    model = MetaFormerBackbone('poolformer_s12')
    report = model.load_pretrained(str(tmp_path / 'extra.pth'))
    assert report['unexpected'] == ['extra.weight']
    assert sorted(report['missing']) == sorted(k for k in state if k.startswith('out_norms.'))
    assert torch.equal(model.stem.conv.weight, state['stem.conv.weight'])


def test_pretrained_weights_enter_through_load_state_dict(tmp_path):
    # One door: the backbone's init_cfg loading goes through load_state_dict, as whole-model
    # loading does, so a load_state_dict hook on the backbone sees it (loading child by child
    # would pass the backbone by).
    state = s12_backbone_state()
    torch.save({k: v for k, v in state.items() if not k.startswith('out_norms.')},
               tmp_path / 'imagenet.pth')
    model = MetaFormerBackbone('poolformer_s12')
    seen, reported = [], []
    model.register_load_state_dict_pre_hook(lambda m, sd, prefix, *rest: seen.append(sorted(sd)))
    model.register_load_state_dict_post_hook(lambda m, keys: reported.append(keys))
    report = model.load_pretrained(str(tmp_path / 'imagenet.pth'))
    assert seen == [sorted(k for k in state if not k.startswith('out_norms.'))]
    assert len(reported) == 1 and sorted(reported[0].missing_keys) == sorted(report['missing'])
    assert report['missing'] and all(k.startswith('out_norms.') for k in report['missing'])


def test_safetensors_dtypes_float16_is_cast_integers_are_refused(tmp_path):
    state = s12_backbone_state()
    save_safetensors({k: v.half() for k, v in state.items()}, tmp_path / 'half.safetensors')
    model = pretrained(tmp_path / 'half.safetensors')
    weight = model.stages[2].blocks[0].mlp.fc1.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, state['stages.2.blocks.0.mlp.fc1.weight'].half().float())

    ints = dict(state, **{'stem.conv.weight': (state['stem.conv.weight'] * 1e4).long()})
    save_safetensors(ints, tmp_path / 'ints.safetensors')
    with pytest.raises(CheckpointError, match=r'1 weights are stored as integers.*'
                       r'stem\.conv\.weight \(int64\)'):
        pretrained(tmp_path / 'ints.safetensors')


def test_demo_loads_whole_models_strictly(det_weights, tmp_path):
    image = COCO / 'val/000001.jpg'
    s24 = detector_state(**{'model.backbone.arch': 'poolformer_s24'})
    cases = {
        'another_arch': (s24, "poolformer_s12 does not have (first: ['stages.0.blocks.2."),
        'extra_key': (dict(det_weights, **{'neck.extra.weight': torch.ones(2)}),
                      'unexpected key in source state_dict: neck.extra.weight'),
        'missing_key': ({k: v for k, v in det_weights.items()
                         if k != 'bbox_head.retina_cls.weight'},
                        'missing keys in source state_dict: bbox_head.retina_cls.weight'),
        'int64': (dict(det_weights, **{'backbone.stem.conv.weight':
                                       det_weights['backbone.stem.conv.weight'].long()}),
                  'stored as integers'),
        'int32_head': (dict(det_weights, **{'bbox_head.retina_cls.weight':
                                            det_weights['bbox_head.retina_cls.weight'].int()}),
                       'bbox_head.retina_cls.weight (int32)'),
    }
    for name, (state, message) in cases.items():
        torch.save({'meta': {}, 'state_dict': state}, tmp_path / f'{name}.pth')
        error = demo_error(image, DET_CFG, tmp_path / f'{name}.pth', '--out-dir', tmp_path)
        assert 'does not fit the model of the config' in error and message in error, name
    # float16 weights are cast on load and the demo draws
    save_safetensors({k: v.half() for k, v in det_weights.items()},
                     tmp_path / 'half.safetensors')
    demo_tool.main([str(image), str(DET_CFG), str(tmp_path / 'half.safetensors'),
                    '--out-dir', str(tmp_path / 'vis')])
    assert cv2.imread(str(tmp_path / 'vis/000001.png')).shape == cv2.imread(str(image)).shape


def test_tools_test_loads_strictly(det_weights, tmp_path):
    s24 = detector_state(**{'model.backbone.arch': 'poolformer_s24'})
    torch.save({'meta': {}, 'state_dict': s24}, tmp_path / 's24.pth')
    proc = run('tools/test.py', DET_CFG, tmp_path / 's24.pth', '--work-dir', tmp_path / 'w',
               ok=False)
    assert proc.returncode != 0
    assert 'does not fit the model of' in proc.stderr
    assert "poolformer_s12 does not have (first: ['stages.0.blocks.2." in proc.stderr
    assert 'coco/bbox_mAP' not in proc.stdout + proc.stderr  # nothing was evaluated

    # Integers where the model has floats, in the backbone (converted layout) and in the neck.
    ints = dict(det_weights, **{'backbone.stem.conv.weight':
                                det_weights['backbone.stem.conv.weight'].long(),
                                'neck.fpn_convs.0.conv.weight':
                                det_weights['neck.fpn_convs.0.conv.weight'].bool()})
    torch.save({'meta': {}, 'state_dict': ints}, tmp_path / 'ints.pth')
    proc = run('tools/test.py', DET_CFG, tmp_path / 'ints.pth', '--work-dir', tmp_path / 'w',
               ok=False)
    assert proc.returncode != 0 and '2 weights are stored as integers or bools' in proc.stderr
    assert 'neck.fpn_convs.0.conv.weight (bool)' in proc.stderr

    # A .safetensors file is read as weights only (the same strict fit), and the test loop runs
    # (these untrained weights detect nothing, so COCO prints no mAP).
    save_safetensors(det_weights, tmp_path / 'model.safetensors')
    proc = run('tools/test.py', DET_CFG, tmp_path / 'model.safetensors', '--work-dir',
               tmp_path / 'st', ok=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'Iter(test) [2/2]' in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- pickle payloads
class OpenOnLoad:
    """Unpickles as ``open(path, 'w')``: loading it creates the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, 'w')


class _BuiltinsModule:
    """Unpickles as ``getattr(getattr, '__self__')``, i.e. the builtins module."""

    def __reduce__(self):
        return getattr, (getattr, '__self__')


class _BuiltinOpen:
    """Unpickles as ``getattr(builtins, 'open')``; callable so pickle accepts it as a reducer."""

    def __call__(self, *args):
        raise AssertionError('only ever unpickled')

    def __reduce__(self):
        return getattr, (_BuiltinsModule(), 'open')


class OpenViaGetattr(OpenOnLoad):
    """Reaches ``open`` through ``getattr`` alone, a builtin runner checkpoints need allowed."""

    def __reduce__(self):
        return _BuiltinOpen(), (self.path, 'w')


@pytest.mark.parametrize('payload', [OpenOnLoad, OpenViaGetattr])
def test_pickle_payload_never_runs_through_test_or_demo(payload, det_weights, tmp_path):
    # The payload is real: unpickled without weights_only it creates its file.
    proof = tmp_path / 'proof'
    torch.save({'meta': {'x': payload(proof)}}, tmp_path / 'proof.pth')
    torch.load(tmp_path / 'proof.pth', weights_only=False)
    assert proof.exists()

    marker = tmp_path / 'pwned'
    path = tmp_path / 'model.pth'
    torch.save({'meta': {'note': payload(marker)}, 'state_dict': det_weights}, path)
    proc = run('tools/test.py', DET_CFG, path, '--work-dir', tmp_path / 'w', ok=False)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    assert 'it was refused, because unpickling it could run code' in proc.stderr
    assert not marker.exists()

    error = demo_error(COCO / 'val/000001.jpg', DET_CFG, path, '--out-dir', tmp_path / 'vis')
    assert 'it was refused, because unpickling it could run code' in error
    assert not marker.exists()
