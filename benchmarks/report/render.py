"""The report's markdown tables and its plot of accuracy against params and FLOPs."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from benchmarks.published import POOLFORMER_SOURCE

from .rows import FLOPS_INPUT, METRICS, NO_RESULTS, PAPER, TASK_METRICS, Row, diff, fmt
from .upernet import plot_upernet, upernet_table

__all__ = ['paper_cell', 'to_markdown', 'plot']


def paper_cell(row: Row, key: str, nd: int = 1) -> str:
    """The published value of ``key`` for a row, or why there is none."""
    paper = row.paper
    if paper is None:
        return 'not in the paper'
    return fmt(paper.get(key), nd) if key in paper else '-'


def to_markdown(rows: Sequence[Row], meta: dict) -> str:
    """The report: one table per task, then notes on every convention used."""
    gpu = meta['device'] == 'cuda'
    out = ['# Benchmark report', '',
           f'Generated {meta["date"]} by `{meta["command"]}` on {meta["machine"]} '
           f'({meta["elapsed_s"]:.0f} s). `make report` regenerates this '
           'file and its plot for all configs.', '',
           f'Paper numbers: {POOLFORMER_SOURCE}. Differences in parentheses are ours minus the '
           "paper's. Params are counted on the model each config builds; FLOPs are "
           'multiply-adds (MACs, what the paper calls FLOPs) of backbone + neck + heads at the '
           "paper's input size, counted by mmengine's FlopAnalyzer; AP / mIoU are read from the "
           "json files `tools/test.py` writes under `work_dirs/<config name>/`. "
           + ('Latency: median `test_step` of one image at that size; memory: '
              '`torch.cuda.max_memory_allocated` during one training step at the config\'s '
              'per-GPU batch.' if gpu else
              'Latency and training memory are measured on a GPU only; this run had none.'), '']
    for task, title in (('detection', 'Detection (COCO val2017; FLOPs at 1280x800)'),
                        ('segmentation', 'Segmentation (ADE20K val; FLOPs at 512x512)')):
        sel = [r for r in rows if r.task == task and r.method != 'UperNet']
        if not sel:
            continue
        mets = TASK_METRICS[task]
        out += [f'## {title}', '',
                '| config | params (M) | paper params (M) | GFLOPs | latency | train memory | '
                + ' | '.join(f'{METRICS[m][2]} (ours)' for m in mets) + ' | '
                + ' | '.join(f'{METRICS[m][2]} (paper)' for m in mets) + ' |',
                '|' + '---|' * (6 + 2 * len(mets))]
        for r in sel:
            paper = r.paper or {}
            params = r.cells.get('params', '-')
            if r.params_m is not None and 'params' in paper:
                params += diff(r.params_m, paper['params'], 2)
            out.append(
                f'| {r.config} | {params} | {paper_cell(r, "params")} | '
                f'{r.cells.get("flops", "-")} | {r.cells.get("latency", "-")} | '
                f'{r.cells.get("memory", "-")} | '
                + ' | '.join(r.cells.get(m, '- (RetinaNet has no masks)') for m in mets) + ' | '
                + ' | '.join(paper_cell(r, m) if r.method != 'RetinaNet' or m == 'bbox_mAP'
                             else '-' for m in mets) + ' |')
        out.append('')
    out += upernet_table([r for r in rows if r.method == 'UperNet'])
    broken = [r for r in rows if r.task not in FLOPS_INPUT]
    if broken:
        out += ['## Configs that could not be read', '']
        out += [f'- {r.config}: {r.cells.get("params")}' for r in broken] + ['']
    sources = [r for r in rows if r.result_source]
    out += ['## Notes', '',
            '- "not in the paper": the PoolFormer paper\'s COCO and ADE20K tables have no entry '
            'for this backbone and method, so there is nothing to compare with.',
            f'- "{NO_RESULTS}": train, then run `tools/test.py CONFIG CHECKPOINT --work-dir '
            'work_dirs/<config name>` and regenerate with `make report`.',
            "- Self-attention (CAFormer's stages 3-4) is counted: mmengine's counter has no rule "
            'for `scaled_dot_product_attention` and would count it as 0; this tool adds one '
            '(q k^T and attention x v multiply-adds).',
            '- Mask R-CNN FLOPs include the RoI heads on the proposals the RPN keeps for a random '
            "input (the test config's limit is 1000), so they are an upper-end estimate.",
            '- The plot `report.png` shows accuracy against params and FLOPs; paper '
            "points are placed at the FLOPs this tool counts for the paper's architecture "
            '(each config reproduces the paper model, see the params columns).']
    if sources:
        out += ['', 'Result files read:', '']
        out += [f'- {r.config}: `{r.result_source}`' for r in sources]
    return '\n'.join(out) + '\n'


def plot(rows: Sequence[Row], path: Path) -> None:
    """Accuracy against params and against FLOPs: paper points (lines) and the user's (stars)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    series = [('RetinaNet', 'bbox_mAP', 'RetinaNet box AP', 'tab:blue'),
              ('Mask R-CNN', 'bbox_mAP', 'Mask R-CNN box AP', 'tab:orange'),
              ('Mask R-CNN', 'segm_mAP', 'Mask R-CNN mask AP', 'tab:green'),
              ('Semantic FPN', 'mIoU', 'Semantic FPN mIoU', 'tab:red')]
    flops_of = {(r.method, r.arch): r.flops_g for r in rows if r.flops_g is not None}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    mine_any = False
    for ax, xkey, xlabel in ((axes[0], 'params', 'params (M)'),
                             (axes[1], 'flops', 'GFLOPs (multiply-adds; det 1280x800, '
                                                'seg 512x512, UperNet 512x2048)')):
        for method, metric, label, color in series:
            pts = []
            for (m, arch), paper in PAPER.items():
                if m != method or metric not in paper:
                    continue
                x = paper['params'] if xkey == 'params' else flops_of.get((m, arch))
                if x is not None:
                    pts.append((x, paper[metric], arch.split('_')[-1].upper()))
            pts.sort()
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], 'o-', color=color,
                        label=f'{label} (paper)', mfc='white')
                for x, y, name in pts:
                    ax.annotate(name, (x, y), textcoords='offset points', xytext=(4, -10),
                                fontsize=7, color=color)
            mine = [((r.params_m if xkey == 'params' else r.flops_g), r.results[metric])
                    for r in rows if r.method == method and metric in r.results]
            mine = [(x, y) for x, y in mine if x is not None]
            if mine:
                mine_any = True
                ax.plot([p[0] for p in mine], [p[1] for p in mine], '*', color=color, ms=13,
                        label=f'{label} (yours)', mec='black')
        mine_any |= plot_upernet(ax, rows, xkey)
        ax.set_xlabel(xlabel)
        ax.set_ylabel('AP / mIoU (%)')
        ax.grid(alpha=0.3)
    axes[1].set_xscale('log')  # segmentation (512x512) and detection (1280x800) side by side
    axes[1].xaxis.set_major_formatter(ticker.ScalarFormatter())
    axes[1].xaxis.set_minor_formatter(ticker.NullFormatter())
    axes[1].set_xticks([25, 50, 100, 200, 400, 1000])
    axes[0].set_title('accuracy vs params')
    axes[1].set_title('accuracy vs FLOPs')
    handles, labels = axes[0].get_legend_handles_labels()
    if not mine_any:
        labels = labels + ['your results: none yet (run tools/test.py)']
        handles = handles + [plt.Line2D([], [], linestyle='none')]
    fig.legend(handles, labels, loc='lower center', ncol=3, fontsize=8, frameon=False)
    fig.suptitle('MetaFormer dense prediction: published vs this toolkit')
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
