"""The backbone builds from mmdet configs and from mmseg configs, each with the other library absent."""
import subprocess
import sys
import textwrap

import pytest

# Runs in a fresh interpreter: makes the named packages unimportable, then loads a config that
# inherits the framework's own base config, swaps in our backbone and builds the whole model.
SCRIPT = textwrap.dedent('''
    import sys, tempfile, os
    BLOCKED = {blocked!r}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in BLOCKED:
                raise ModuleNotFoundError(f'No module named {{name!r}} (blocked for this test)')
    sys.meta_path.insert(0, Block())

    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    import torch
    cfg_text = {cfg!r}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'cfg.py')
        open(path, 'w').write(cfg_text)
        cfg = Config.fromfile(path)
    init_default_scope(cfg.default_scope)
    from {lib}.registry import MODELS
    model = MODELS.build(cfg.model)
    assert type(model.backbone).__name__ == 'MetaFormerBackbone', type(model.backbone)
    feats = model.extract_feat(torch.randn(1, 3, 128, 160))
    print('OK', type(model).__name__, [tuple(f.shape) for f in feats])
    for name in BLOCKED:
        assert name not in sys.modules, name
''')

MMDET_CFG = '''
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmdet_plugin'], allow_failed_imports=False)
model = dict(
    backbone=dict(_delete_=True, type='MetaFormer', arch='poolformer_s12', out_indices=(1, 2, 3)),
    neck=dict(in_channels=[128, 320, 512], start_level=0, add_extra_convs='on_input', num_outs=5))
'''

MMSEG_CFG = '''
_base_ = 'mmseg::_base_/models/fpn_r50.py'
custom_imports = dict(imports=['mmseg_plugin'], allow_failed_imports=False)
default_scope = 'mmseg'
model = dict(
    data_preprocessor=dict(size=(128, 160)),
    pretrained=None,
    backbone=dict(_delete_=True, type='MetaFormer', arch='caformer_s18'),
    neck=dict(in_channels=[64, 128, 320, 512], num_outs=4),
    decode_head=dict(num_classes=150))
'''


@pytest.mark.parametrize('lib, cfg, blocked, expect', [
    ('mmdet', MMDET_CFG, ('mmseg', 'mmpretrain'), 'OK RetinaNet'),
    ('mmseg', MMSEG_CFG, ('mmdet', 'mmpretrain'), 'OK EncoderDecoder'),
])
def test_builds_with_only_one_framework(lib, cfg, blocked, expect):
    proc = subprocess.run([sys.executable, '-c', SCRIPT.format(blocked=blocked, cfg=cfg, lib=lib)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expect in proc.stdout


def test_plugins_register_the_same_class():
    import mmdet_plugin  # noqa: F401
    import mmseg_plugin  # noqa: F401
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG

    from metaformer_dense import MetaFormerBackbone
    assert DET.get('MetaFormer') is SEG.get('MetaFormer') is MetaFormerBackbone
