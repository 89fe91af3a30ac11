"""The studies behind the defaults (benchmarks/studies/): each runs at a tiny size and writes the
record it promises, with the rows and checks its docs describe."""
import pytest

from backbone_helpers import quick_compile_backbone
from benchmarks.studies import profile_norms, step_floor, train_step


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


def test_profile_norms_tables_where_the_group_norm_time_goes(tmp_path):
    """On CPU (operators, not kernels): torch's norms show as GroupNorm operators, the CUDA
    path's as var_mean reductions and no GroupNorm operator at all."""
    rec = profile_norms.main(['--device', 'cpu', '--archs', 'poolformer_s12', '--size', '64x96',
                              '--repeats', '1', '--warmup', '0', '--rewrites',
                              '--out', str(tmp_path / 'pn')])
    profs = rec['profiles']['poolformer_s12']
    assert [(p['mode'], p['batch']) for p in profs][::5] == [('forward', 1), ('training step', 2)]
    by = {(p['mode'], p['variant']): p['categories'] for p in profs}
    for mode in ('forward', 'training step'):
        assert by[mode, 'torch norms'].get('torch GroupNorm', 0) > 0
        assert by[mode, 'torch norms'].get('Welford reductions (var_mean)', 0) == 0
        assert by[mode, 'spread norms'].get('torch GroupNorm', 0) == 0
        assert by[mode, 'spread norms']['Welford reductions (var_mean)'] > 0
    assert profile_norms.category('void at::native::RowwiseMomentsCUDAKernel<float>') == \
        'torch GroupNorm'
    md = (tmp_path / 'pn.md').read_text()
    assert 'nothing here is a GPU number' in md and '| forward | 1 | 64x96 | spread norms |' in md
