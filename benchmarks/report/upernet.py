"""The report's UperNet part: our params / MACs / mIoU next to the published MetaFormer table."""
from __future__ import annotations

from typing import List, Sequence

from benchmarks.published import (UPERNET_ADE20K, UPERNET_ADE20K_MACS_INPUT,
                                  UPERNET_ADE20K_REFERENCE, UPERNET_ADE20K_SOURCE)

from .rows import Row, diff, fmt

__all__ = ['upernet_table', 'plot_upernet']


def upernet_table(rows: Sequence[Row]) -> List[str]:
    """UperNet rows with the published params, MACs and single- / multi-scale mIoU beside ours."""
    if not rows:
        return []
    h, w = UPERNET_ADE20K_MACS_INPUT
    out = [f'## UperNet (ADE20K val, 160k; GFLOPs = GMACs at {h}x{w})', '',
           f'Published: {UPERNET_ADE20K_SOURCE}. Published params and MACs are rounded to '
           "integers there. \"MS\": multi-scale + flip test, ours from `tools/test.py --tta` "
           '(written to `work_dirs/<config name>_tta/`).', '',
           '| config | params (M) | published params (M) | GFLOPs | published GFLOPs | latency | '
           'train memory | mIoU (ours) | mIoU (published) | mIoU MS (ours) | mIoU MS (published) |',
           '|' + '---|' * 11]
    for r in rows:
        paper = r.paper or {}
        params, flops = r.cells.get('params', '-'), r.cells.get('flops', '-')
        if r.params_m is not None and 'params' in paper:
            params += diff(r.params_m, paper['params'], 1)
        if r.flops_g is not None and 'flops' in paper:
            flops += diff(r.flops_g, paper['flops'], 0)
        pub = [fmt(paper.get(k), 0 if k in ('params', 'flops') else 1) if paper
               else 'none published' for k in ('params', 'flops', 'mIoU', 'mIoU_ms')]
        out.append(f'| {r.config} | {params} | {pub[0]} | {flops} | {pub[1]} | '
                   f'{r.cells.get("latency", "-")} | {r.cells.get("memory", "-")} | '
                   f'{r.cells.get("mIoU", "-")} | {pub[2]} | {r.cells.get("mIoU_ms", "-")} | '
                   f'{pub[3]} |')
    return out + ['']


def plot_upernet(ax, rows: Sequence[Row], xkey: str) -> bool:
    """Published UperNet mIoU (single-scale) per family, the table's other backbones on the
    params axis, and the user's UperNet results; returns whether any of the user's was drawn."""
    for family, color in (('convformer', 'tab:purple'), ('caformer', 'tab:brown')):
        pts = sorted((pub['params_m'] if xkey == 'params' else pub['macs_g'], pub['miou_ss'],
                      arch.split('_')[-1].upper())
                     for arch, pub in UPERNET_ADE20K.items() if arch.startswith(family + '_'))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], 's--', color=color, mfc='white',
                label=f'UperNet {family} mIoU (published)')
        for x, y, name in pts:
            ax.annotate(name, (x, y), textcoords='offset points', xytext=(4, 4), fontsize=7,
                        color=color)
    if xkey == 'params':
        for name, pub in UPERNET_ADE20K_REFERENCE.items():
            ax.plot(pub['params_m'], pub['miou_ss'], 'x', color='gray')
            ax.annotate(f'{name} (UperNet)', (pub['params_m'], pub['miou_ss']),
                        textcoords='offset points', xytext=(4, -10), fontsize=7, color='gray')
    mine = [((r.params_m if xkey == 'params' else r.flops_g), r.results['mIoU'])
            for r in rows if r.method == 'UperNet' and 'mIoU' in r.results]
    mine = [(x, y) for x, y in mine if x is not None]
    if mine:
        ax.plot([p[0] for p in mine], [p[1] for p in mine], '*', color='tab:purple', ms=13,
                label='UperNet mIoU (yours)', mec='black')
    return bool(mine)
