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
