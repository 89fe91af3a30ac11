"""benchmarks/report: the cells a user reads, filled from real models and files."""
import json
from pathlib import Path

import pytest
import torch

from benchmarks import report
from benchmarks.report import cli as report_cli
from benchmarks.report import measure
from benchmarks.report.merge import merge_reports
from benchmarks.published import POOLFORMER_ADE20K
from metaformer_runner import read_metrics
from conftest import REPO


SEG_S12 = str(REPO / 'configs' / 'semantic_fpn_poolformer_s12.py')
RETINA_S12 = str(REPO / 'configs' / 'retinanet_poolformer_s12.py')


def _write_test_result(work_dirs: Path, name: str, metrics: dict, stamp='20260101_120000'):
    """The file mmengine's runner writes at the end of tools/test.py."""
    run = work_dirs / name / stamp
    run.mkdir(parents=True)
    (run / f'{stamp}.json').write_text(json.dumps(dict(metrics, data_time=0.01, time=0.5)))


def test_params_and_flops_of_s12_semantic_fpn(tmp_path):
    row = report.analyse(SEG_S12, tmp_path, flops=True, device='cpu')
    assert (row.task, row.method, row.arch) == ('segmentation', 'Semantic FPN', 'poolformer_s12')
    # The paper's 15.7 M: a config more than 0.05 M away is not the paper's model.
    paper = POOLFORMER_ADE20K[('Semantic FPN', 'poolformer_s12')]
    assert row.params_m == pytest.approx(paper['params'], abs=0.05)
    assert row.cells['params'] == f'{row.params_m:.2f}'
    assert row.cells['flops'] == f'{row.flops_g:.1f}'
    # The backbone alone is PoolFormer-S12's 1.82 GMACs at 224x224 scaled to 512x512 (9.5 G);
    # FPN neck and head come on top of it.
    backbone_g = 1.823 * (512 / 224) ** 2
    assert backbone_g * 2 < row.flops_g < backbone_g * 5


def test_ap_read_from_a_test_run_and_compared_with_the_paper(tmp_path, capsys):
    work_dirs = tmp_path / 'work_dirs'
    # An older training log with a validation AP (json lines) must lose to the test result.
    vis = work_dirs / 'retinanet_poolformer_s12' / '20251231_000000' / 'vis_data'
    vis.mkdir(parents=True)
    (vis / '20251231_000000.json').write_text(
        json.dumps({'lr': 1e-4, 'loss': 0.5, 'iter': 50, 'step': 50}) + '\n'
        + json.dumps({'coco/bbox_mAP': 0.2, 'coco/bbox_mAP_50': 0.4, 'step': 1}) + '\n')
    _write_test_result(work_dirs, 'retinanet_poolformer_s12',
                       {'coco/bbox_mAP': 0.351, 'coco/bbox_mAP_50': 0.55, 'coco/bbox_mAP_75': 0.37})
    md_path, png = tmp_path / 'r.md', tmp_path / 'r.png'
    md = report.main([RETINA_S12, '--work-dirs', str(work_dirs), '--out', str(md_path),
                      '--plot', str(png), '--no-flops'])
    row = next(line for line in md.splitlines() if line.startswith('| retinanet_poolformer_s12'))
    assert '| 35.1 (-1.1) |' in row  # ours 35.1 vs the paper's 36.2
    assert '| 36.2 |' in row
    assert md_path.read_text() == md and md in capsys.readouterr().out
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_miou_from_validation_log_when_no_test_run(tmp_path):
    vis = tmp_path / 'semantic_fpn_poolformer_s12' / '20260101_000000' / 'vis_data'
    vis.mkdir(parents=True)
    (vis / 'scalars.json').write_text(
        json.dumps({'aAcc': 70.0, 'mIoU': 30.5, 'mAcc': 40.0, 'step': 100}) + '\n'
        + json.dumps({'aAcc': 75.0, 'mIoU': 36.9, 'mAcc': 45.0, 'step': 200}) + '\n')
    found, source = read_metrics(tmp_path / 'semantic_fpn_poolformer_s12', ['mIoU'])
    assert found == {'mIoU': 36.9}  # mmseg writes percent already; the last record wins
    assert 'scalars.json' in source


def test_unfillable_cells_say_why(tmp_path):
    broken = tmp_path / 'broken_config.py'
    broken.write_text("_base_ = 'mmdet::no/such/base.py'\n")
    rows = [report.analyse(RETINA_S12, tmp_path, flops=False, device='cpu'),
            report.analyse(str(REPO / 'configs' / 'retinanet_caformer_s18.py'), tmp_path,
                           flops=False, device='cpu'),
            report.analyse(str(broken), tmp_path, flops=False, device='cpu')]
    ours, caformer, bad = rows
    assert ours.cells['latency'] == ours.cells['memory'] == report.NO_GPU
    assert ours.cells['flops'] == 'not measured (--no-flops)'
    assert ours.cells['bbox_mAP'].startswith(report.NO_RESULTS)
    assert 'retinanet_poolformer_s12' in ours.cells['bbox_mAP']  # names where it looked
    assert caformer.paper is None and report.paper_cell(caformer, 'bbox_mAP') == 'not in the paper'
    assert bad.cells['params'].startswith('config failed to load')
    md = report.to_markdown(rows, dict(date='d', command='c', machine='m', torch='t',
                                       device='cpu', elapsed_s=1.0))
    assert 'not in the paper' in md and 'no GPU' in md and 'config failed to load' in md
    for line in md.splitlines():  # no empty cells: every cell holds a number or a reason
        if line.startswith('| retinanet'):
            assert '|  |' not in line and '||' not in line


def test_attention_multiply_adds_are_counted():
    """mmengine's counter skips fused attention; the report's handle counts q k^T and attn v."""
    import torch
    import torch.nn.functional as F
    from mmengine.analysis import FlopAnalyzer

    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    q, k, v = torch.randn(2, 4, 10, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 5)
    plain = FlopAnalyzer(Attention(), (q, k, v)).unsupported_ops_warnings(False)
    assert plain.total() == 0  # why the handle exists
    counted = FlopAnalyzer(Attention(), (q, k, v)).set_op_handle(
        'aten::scaled_dot_product_attention', measure._sdpa_macs)
    assert counted.total() == 2 * 4 * 10 * 6 * (8 + 5)


# ---------------------------------------------------------------------------------------------
# --update: new rows into an existing report, the others kept
# ---------------------------------------------------------------------------------------------
OLD_REPORT = """# Benchmark report

Generated 2026-01-01 by `python -m benchmarks.report` on CPU. `make report` regenerates this.

Paper numbers: ...

## Detection (COCO)

| config | params (M) |
|---|---|
| a_old | 1.00 |
| c_old | 3.00 |

## Segmentation (ADE20K)

| config | params (M) |
|---|---|
| s_old | 5.00 |

## Notes

- a note

Result files read:

- a_old: `work_dirs/a_old/x.json`
"""

NEW_ROWS = """# Benchmark report

Generated 2026-02-02 by `python -m benchmarks.report --update b c_old u` on CPU. ...

## Detection (COCO)

| config | params (M) |
|---|---|
| b_new | 2.00 |
| c_old | 3.50 |

## UperNet (ADE20K)

| config | params (M) |
|---|---|
| u_new | 9.00 |

## Notes

- a note

Result files read:

- b_new: `work_dirs/b_new/y.json`
"""


def test_rows_are_replaced_or_inserted_sorted_and_the_rest_kept():
    md = merge_reports(OLD_REPORT, NEW_ROWS,
                       'Rows of b_new, c_old, u_new measured 2026-02-02 by `x`.')
    lines = md.splitlines()
    det = lines[lines.index('## Detection (COCO)'):lines.index('## Segmentation (ADE20K)')]
    assert [ln for ln in det if ln.startswith('| ') and 'config' not in ln] == [
        '| a_old | 1.00 |', '| b_new | 2.00 |', '| c_old | 3.50 |']
    assert '| s_old | 5.00 |' in lines  # a table the update did not touch
    # a section the old report lacked goes before the notes
    assert lines.index('## Segmentation (ADE20K)') < lines.index('## UperNet (ADE20K)') \
        < lines.index('## Notes')
    assert '| u_new | 9.00 |' in lines
    assert md.count('Generated 2026-01-01') == 1 and 'Generated 2026-02-02' not in md
    assert lines[lines.index('Rows of b_new, c_old, u_new measured 2026-02-02 by `x`.') - 1] == ''
    assert lines[-2:] == ['- a_old: `work_dirs/a_old/x.json`', '- b_new: `work_dirs/b_new/y.json`']
    # a second update adds its note after the first
    again = merge_reports(md, NEW_ROWS, 'Rows of b_new measured later.').splitlines()
    assert again.index('Rows of b_new measured later.') == \
        again.index('Rows of b_new, c_old, u_new measured 2026-02-02 by `x`.') + 2


def test_update_needs_configs_and_an_existing_report(tmp_path):
    with pytest.raises(SystemExit, match='--update puts the rows'):
        report_cli.main(['--update', '--out', str(tmp_path / 'none.md')])
    with pytest.raises(SystemExit, match='make sure --out'):
        report_cli.main(['--update', 'configs/retinanet_poolformer_s12.py',
                         '--out', str(tmp_path / 'none.md')])
