"""The studies behind the defaults (benchmarks/studies/): each runs at a tiny size and writes the
record it promises, with the rows and checks its docs describe."""
import pytest

from backbone_helpers import quick_compile_backbone
from benchmarks.studies import step_floor, train_step


def test_train_step_benchmark_records_time_and_equal_gradients(tmp_path):
    out = tmp_path / 'ts'
    rec = train_step.main(['--device', 'cpu', '--archs', 'poolformer_s12', '--size', '64x96',
                           '--batch', '1', '--repeats', '1', '--warmup', '0', '--out', str(out)])
    (row,) = rec['rows']
    assert set(row['impls']) == set(train_step.IMPLS)
    assert all(v['median_s'] > 0 for v in row['impls'].values())
    # every toolkit variant computes timm's gradients (fp32 rounding only)
    assert set(row['grad_rel_diff_vs_ref']) == set(train_step.BACKBONE_IMPLS)
    assert all(d < 1e-4 for d, _ in row['grad_rel_diff_vs_ref'].values())
    md = (tmp_path / 'ts.md').read_text()
    assert '| poolformer_s12 | 1x64x96 | lean (NHWC) |' in md


def test_benchmarks_refuse_a_bad_size_naming_it(capsys):
    with pytest.raises(SystemExit):
        train_step.main(['--size', '800-1216'])
    assert "bad size '800-1216': write HxW" in capsys.readouterr().err


def test_step_floor_runs_the_steps_matrix_products_and_records_the_bound(tmp_path):
    rec = step_floor.main(['--size', '64x96', '--repeats', '1', '--warmup', '0',
                           '--out', str(tmp_path / 'floor')])
    (row,) = rec['rows']
    assert set(row['median_s']) == set(step_floor.IMPLS)
    # the floor's products: fc1 / fc2 forward, input and weight gradients (6 per block, 2*M*C*H
    # FLOP each), which are most of the step's counted work
    dims, depths, hidden = (64, 128, 320, 512), (2, 2, 6, 2), 4
    rows = [64 * 96 // s ** 2 for s in (4, 8, 16, 32)]
    mlp = sum(d * 6 * 2 * m * c * hidden * c for d, m, c in zip(depths, rows, dims))
    assert 0.8 < mlp / (row['step_gflop'] * 1e9) < 1
    assert '| poolformer_s12 | 1x64x96 |' in (tmp_path / 'floor.md').read_text()
    with pytest.raises(SystemExit, match='pooling token mixers'):
        step_floor.main(['--archs', 'convformer_s18', '--size', '64x96', '--repeats', '1',
                         '--out', str(tmp_path / 'conv')])


def test_step_floor_times_the_compiled_step_next_to_the_floor(tmp_path, monkeypatch):
    monkeypatch.setattr(step_floor, 'MetaFormerBackbone', quick_compile_backbone)
    rec = step_floor.main(['--size', '64x96', '--repeats', '1', '--warmup', '0', '--compile',
                           '--out', str(tmp_path / 'floor')])
    (row,) = rec['rows']
    assert set(row['median_s']) == {*step_floor.IMPLS, step_floor.COMPILED}
    assert row['compile_rejected'] is None and row['compile_first_step_s'] > 0
    text = (tmp_path / 'floor.md').read_text()
    assert 'With `compile=True`' in text and '| agreed |' in text
