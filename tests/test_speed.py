"""benchmarks/speed.py, the speed comparison: its switch rows, an interrupted run, a clear
error when a compared implementation does not import."""
import json
import signal

import pytest
import torch
from tqdm import tqdm

from backbone_helpers import quick_compile_backbone
from benchmarks import speed, speed_timing


def test_speed_switches_time_compile_bf16_and_the_unfused_cpu_mlp(monkeypatch):
    from metaformer_dense import fast_path
    monkeypatch.setattr(speed_timing, 'MetaFormerBackbone', quick_compile_backbone)
    rec = speed_timing.bench_switches('poolformer_s12', (64, 96), 1, 0, torch.device('cpu'),
                                      tqdm(disable=True))
    assert set(rec['impls']) == {'toolkit', 'compile', 'bf16 autocast', speed_timing.UNFUSED}
    assert rec['compile_rejected'] is None
    assert rec['max_abs_diff_vs_fp32_eager'][speed_timing.UNFUSED] < 1e-4
    # the fused default is back after the row (where this torch has oneDNN's fused linear)
    assert fast_path._fused_linear is torch.backends.mkldnn.is_available()


def test_speed_benchmark_keeps_finished_sections_when_interrupted(tmp_path, monkeypatch):
    """A timeout (SIGTERM) or Ctrl-C during a later section still writes what was measured."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt('signal 15')

    monkeypatch.setattr(speed, 'bench_retinanet', interrupted)
    out = tmp_path / 'speed'
    sigterm = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exc:
        speed.main(['--quick', '--device', 'cpu', '--impls', 'toolkit', '--skip', 'switches',
                    '--out', str(out)])
    assert exc.value.code == 130
    assert signal.getsignal(signal.SIGTERM) is sigterm  # the caller's handler is back
    rec = json.loads((tmp_path / 'speed.json').read_text())
    assert rec['interrupted'] and rec['backbones'] and 'retinanet' not in rec
    assert '**Interrupted run**' in (tmp_path / 'speed.md').read_text()


def test_speed_benchmark_names_why_mmpretrain_does_not_import(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, 'mmpretrain.models', None)  # its import now fails
    with pytest.raises(SystemExit, match=r'importing it failed: ModuleNotFoundError: .*'
                                         r'mmpretrain\.models'):
        speed.main(['--quick', '--device', 'cpu', '--impls', 'toolkit', 'mmpretrain'])


def test_speed_switches_time_the_cuda_path_variants_where_it_runs(monkeypatch):
    from metaformer_dense import cuda_path
    monkeypatch.setattr(speed_timing, 'MetaFormerBackbone', quick_compile_backbone)
    with cuda_path.used_on('cpu'):
        rec = speed_timing.bench_switches('poolformer_s12', (64, 96), 1, 0, torch.device('cpu'),
                                          tqdm(disable=True))
    rows = {'torch norms', 'rewrite: algebraic_mixer', 'rewrite: fold_norm2'}
    assert rows <= set(rec['impls'])
    assert all(rec['max_abs_diff_vs_fp32_eager'][r] < 1e-4 for r in rows)
    assert not any(cuda_path.OPTIONS.values()) and not cuda_path.wanted('cpu')


def test_speed_benchmark_without_mmcv_leaves_mmpretrain_out_with_a_note(tmp_path, monkeypatch):
    """The GPU quick check (no mmcv, so no mmpretrain): the default implementations go on
    without mmpretrain, say so in the record, and time forward+backward at batch 2."""
    import sys
    monkeypatch.setitem(sys.modules, 'mmpretrain.models', None)
    rec = speed.main(['--quick', '--device', 'cpu', '--skip', 'retinanet', 'scaling',
                      'switches', '--cuda-path', '--batch-backward', '2', '--out',
                      str(tmp_path / 'speed')])
    assert rec['impls'] == ['toolkit', 'toolkit-nchw', 'toolkit-torch-norms', 'timm']
    assert any('mmpretrain left out' in n for n in rec['notes'])
    assert [r['batch'] for r in rec['backbones']] == [1, 2]
    assert 'Notes: ' in (tmp_path / 'speed.md').read_text()
