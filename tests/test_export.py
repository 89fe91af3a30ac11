"""What tracers, exporters and compilers record of the backbone, and ONNX files of whole
detectors and segmentors in tensor mode, compute what eager computes.

Each graph is made at one input size and run at that size and at another, against the eager
backbone on the same input. The ImageNet init would hide wrong blocks (layer scales of 1e-5), so
the weights are randomized. The recorded graphs run the same operations; what differs is float
rounding. Tolerance: 1e-4 relative, and 1e-4 absolute times the output's largest magnitude (at
least 1e-4): float32 rounding grows with the scale of the activations, which the randomized
weights push into the tens in the late stages, and ONNX Runtime's matmuls sum in another order
than torch's. A wrongly recorded block differs by orders of magnitude more.
"""
import onnxruntime as ort
import pytest
import torch

import backbone_helpers as helpers
from backbone_helpers import randomized
from metaformer_dense import fast_path
from conftest import REPO, load_script

TRACED, OTHER = (64, 96), (96, 128)  # (H, W): the size a graph is made at, and another
RTOL = 1e-4


def _image(hw, seed):
    return torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(seed))


def _eager(model, x):
    with torch.no_grad():
        return model(x)


def _assert_matches(outs, expected, what):
    assert len(outs) == len(expected), what
    for i, (o, e) in enumerate(zip(outs, expected)):
        o = torch.as_tensor(o)
        assert o.shape == e.shape, f'{what}, output {i}'
        atol = 1e-4 * max(1.0, e.abs().max().item())
        torch.testing.assert_close(o, e, rtol=RTOL, atol=atol,
                                   msg=lambda m: f'{what}, output {i}: {m}')


@pytest.fixture
def small_chunks(monkeypatch):
    # Several MLP row chunks per stage, so a recorded chunk loop would show.
    helpers.small_chunks(monkeypatch)


@pytest.fixture
def spy(monkeypatch):
    return helpers.record_calls(monkeypatch, fast_path, 'stage_forward')


def _onnx_session(path):
    return ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])


@pytest.mark.parametrize('arch', ['poolformer_s12', 'convformer_s18', 'caformer_s18',
                                  'randformer_s12'])
def test_onnx_torchscript_exporter_matches_eager(arch, tmp_path, small_chunks):
    model = randomized(arch).eval()
    path = tmp_path / 'backbone.onnx'
    with torch.no_grad():
        torch.onnx.export(model, (_image(TRACED, 0),), str(path), dynamo=False, opset_version=17,
                          input_names=['image'], dynamic_axes={'image': {2: 'height', 3: 'width'}})
    session = _onnx_session(path)
    for seed, hw in enumerate((TRACED, OTHER)):
        x = _image(hw, seed)
        _assert_matches(session.run(None, {'image': x.numpy()}), _eager(model, x),
                        f'{arch} ONNX (TorchScript exporter) at {hw}')


def test_onnx_dynamo_exporter_matches_eager(tmp_path, small_chunks):
    # torch 2.14's default exporter: torch.export, then onnxscript. CAFormer: attention stages too.
    model = randomized('caformer_s18').eval()
    path = tmp_path / 'backbone.onnx'
    program = torch.onnx.export(model, (_image(TRACED, 0),), dynamo=True, input_names=['image'],
                                dynamic_shapes={'x': {2: 'height', 3: 'width'}}, verbose=False)
    program.save(str(path))
    session = _onnx_session(path)
    for seed, hw in enumerate((TRACED, OTHER)):
        x = _image(hw, seed)
        _assert_matches(session.run(None, {'image': x.numpy()}), _eager(model, x),
                        f'ONNX (dynamo exporter) at {hw}')


@pytest.mark.filterwarnings('ignore:`torch.jit.trace')
@pytest.mark.parametrize('arch', ['poolformer_s12', 'caformer_s18', 'randformer_s12'])
def test_jit_trace_runs_at_other_sizes(arch, small_chunks):
    model = randomized(arch).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, _image(TRACED, 0), check_trace=False)
        x = _image(OTHER, 1)
        _assert_matches(traced(x), _eager(model, x), f'{arch} traced at {TRACED}, run at {OTHER}')


@pytest.mark.parametrize('arch', ['poolformer_s12', 'randformer_s12'])
def test_torch_export_with_dynamic_sizes_runs_at_other_sizes(arch, small_chunks):
    # CAFormer goes through torch.export in test_onnx_dynamo_exporter_matches_eager.
    model = randomized(arch).eval()
    dynamic = torch.export.Dim.DYNAMIC
    program = torch.export.export(model, (_image(TRACED, 0),),
                                  dynamic_shapes={'x': {2: dynamic, 3: dynamic}})
    exported = program.module()
    for seed, hw in enumerate((TRACED, OTHER, (160, 64))):
        x = _image(hw, seed)
        with torch.no_grad():
            outs = exported(x)
        _assert_matches(outs, _eager(model, x), f'{arch} exported at {TRACED}, run at {hw}')


def test_compiled_and_symbolically_traced_graphs_run_the_modules(spy):
    model = randomized('poolformer_s12').eval()
    x = _image(TRACED, 0)
    expected = _eager(model, x)
    assert len(spy) == 4  # eager and unobserved: the CPU path
    spy.clear()
    compiled = torch.compile(model, backend='eager')  # dynamo's graph, run eagerly: quick
    _assert_matches(_eager(compiled, x), expected, 'torch.compile')
    _assert_matches(torch.fx.symbolic_trace(model)(x), expected, 'torch.fx.symbolic_trace')
    # the backbone's own compile switch (its check against eager would run the CPU path)
    model.compile_cfg = dict(backend='eager', verify=False)
    _assert_matches(_eager(model, x), expected, 'MetaFormerBackbone(compile=...)')
    assert not spy  # none of them recorded the chunk loop or the in-place updates


# ---------------------------------------------------------------------------------------------
# Whole models in mmdet's / mmseg's tensor mode, through tools/export_onnx.py
# ---------------------------------------------------------------------------------------------
export_tool = load_script('tools/export_onnx')
DEMO = REPO / 'configs' / 'demo'


def _tensor_mode(config, features=False):
    model, _ = export_tool.build_model(str(DEMO / config))
    with torch.no_grad():  # make the backbone's blocks matter (ImageNet init: 1e-5)
        for name, p in model.backbone.named_parameters():
            if 'layer_scale' in name:
                p.fill_(0.3)
    return export_tool.tensor_mode(model, features)


@pytest.mark.parametrize('config,exporter,names', [
    ('retinanet_poolformer_s12_tiny.py', 'dynamo',
     [f'cls_score_{i}' for i in range(5)] + [f'bbox_pred_{i}' for i in range(5)]),
    ('semantic_fpn_poolformer_s12_tiny.py', 'dynamo', ['seg_logits']),
])  # the TorchScript exporter: test_export_tool_command_line
def test_tensor_mode_onnx_matches_eager_at_two_sizes(config, exporter, names, tmp_path,
                                                    small_chunks):
    module = _tensor_mode(config)
    path = str(tmp_path / 'model.onnx')
    assert export_tool.export(module, path, TRACED, exporter) == names
    assert [o.name for o in _onnx_session(path).get_outputs()] == names
    diffs = export_tool.check(path, module, [TRACED, OTHER, (128, 64)])  # raises beyond 1e-4
    assert len(diffs) == 3 and max(diffs) < 1e-3


def test_two_stage_detector_exports_features_and_refuses_the_rest(tmp_path, small_chunks):
    with pytest.raises(ValueError, match="two-stage detector.*NMS.*--features"):
        _tensor_mode('mask_rcnn_poolformer_s12_tiny.py')
    module = _tensor_mode('mask_rcnn_poolformer_s12_tiny.py', features=True)
    path = str(tmp_path / 'features.onnx')
    assert export_tool.export(module, path, TRACED, 'torchscript') == [
        f'feature_{i}' for i in range(5)]
    export_tool.check(path, module, [TRACED, OTHER])


def test_export_tool_command_line(tmp_path, capsys):
    # Semantic FPN through the TorchScript exporter: without the tool's Upsample adaptation its
    # logits are wrong by about 3 at any size but the exported one.
    out = tmp_path / 'fpn.onnx'
    export_tool.main([str(DEMO / 'semantic_fpn_poolformer_s12_tiny.py'), '--out', str(out),
                      '--shape', '64', '96', '--check', '96', '128', '128', '64',
                      '--exporter', 'torchscript'])  # --check raises beyond the tolerance
    lines = capsys.readouterr().out.splitlines()
    assert out.is_file() and "outputs ['seg_logits']" in lines[0]
    assert [ln.split(':')[0] for ln in lines[1:]] == [
        'onnxruntime vs eager at 64x96', 'onnxruntime vs eager at 96x128',
        'onnxruntime vs eager at 128x64']
    with pytest.raises(SystemExit):
        export_tool.parse_args([str(DEMO / 'semantic_fpn_poolformer_s12_tiny.py'), '--out',
                                str(out), '--shape', '100', '96'])
