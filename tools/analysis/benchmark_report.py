"""Benchmark report: params, FLOPs, speed, memory and accuracy of configs next to the paper.

For every config (default: all ``configs/*.py`` at the top level) the built model's parameters,
its FLOPs at the paper's input size (detection 1280x800, segmentation 512x512, UperNet 512x2048
as its published MACs), inference
latency / FPS and peak training memory (on a GPU only), and the box AP / mask AP / mIoU that the
user's own ``tools/test.py`` runs wrote under ``work_dirs/<config name>/`` are put next to the
published numbers of the PoolFormer paper (UperNet: the MetaFormer Baselines table in
``benchmarks/published.py``; its multi-scale mIoU is read from ``work_dirs/<config name>_tta/``,
where ``tools/test.py --tta`` writes by default), with the difference. A cell that cannot be filled
says why. A PNG plots accuracy against params and against FLOPs, paper points and the user's.

FLOPs here are multiply-adds (MACs), the quantity the paper calls FLOPs, counted by
``mmengine.analysis.FlopAnalyzer`` (the counter behind ``get_model_complexity_info``; used
directly so that every model is traced once) over backbone + neck + heads without
post-processing. For Mask R-CNN the RoI heads run on the proposals the RPN keeps for the random
input (up to the test config's 1000; the mask head on the first 100), as mmdet's own FLOPs tool does.

Usage::

    .venv/bin/python tools/analysis/benchmark_report.py               # all configs -> docs/
    .venv/bin/python tools/analysis/benchmark_report.py configs/retinanet_poolformer_s12.py \\
        --out /tmp/report.md --plot /tmp/report.png
    make report
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the plugins and the backbone live at the repo root
    sys.path.insert(0, str(ROOT))

# ----------------------------------------------------------------------------------------------
# Published numbers (PoolFormer paper, CVPR 2022: Table 3 COCO val2017 1x, Table 4 ADE20K val)
# ----------------------------------------------------------------------------------------------
#: (method, backbone arch) -> params in millions and metrics in percent.
PAPER: Dict[Tuple[str, str], Dict[str, float]] = {
    ('RetinaNet', 'poolformer_s12'): dict(params=21.7, bbox_mAP=36.2),
    ('RetinaNet', 'poolformer_s24'): dict(params=31.1, bbox_mAP=38.9),
    ('RetinaNet', 'poolformer_s36'): dict(params=40.6, bbox_mAP=39.5),
    ('Mask R-CNN', 'poolformer_s12'): dict(params=31.6, bbox_mAP=37.3, segm_mAP=34.6),
    ('Mask R-CNN', 'poolformer_s24'): dict(params=41.0, bbox_mAP=40.1, segm_mAP=37.0),
    ('Mask R-CNN', 'poolformer_s36'): dict(params=50.5, bbox_mAP=41.0, segm_mAP=37.7),
    ('Semantic FPN', 'poolformer_s12'): dict(params=15.7, mIoU=37.2),
    ('Semantic FPN', 'poolformer_s24'): dict(params=25.1, mIoU=40.3),
    ('Semantic FPN', 'poolformer_s36'): dict(params=34.6, mIoU=42.0),
    ('Semantic FPN', 'poolformer_m36'): dict(params=59.8, mIoU=42.4),
    ('Semantic FPN', 'poolformer_m48'): dict(params=77.1, mIoU=42.7),
}
PAPER_SOURCE = ('PoolFormer paper (Yu et al., CVPR 2022), Table 3 (COCO val2017, 1x) and '
                'Table 4 (ADE20K val, Semantic FPN 40k iterations)')
# UperNet, ADE20K 160k (ConvFormer / CAFormer): the one copy is benchmarks/published.py.
from benchmarks.published import (UPERNET_ADE20K, UPERNET_ADE20K_MACS_INPUT,  # noqa: E402
                                  UPERNET_ADE20K_REFERENCE, UPERNET_ADE20K_SOURCE)

#: The paper's input sizes for FLOPs, (H, W).
FLOPS_INPUT = {'detection': (800, 1280), 'segmentation': (512, 512)}
#: metric key in this report -> (key mmengine writes, factor to percent, label).
METRICS = {
    'bbox_mAP': ('coco/bbox_mAP', 100.0, 'box AP'),
    'segm_mAP': ('coco/segm_mAP', 100.0, 'mask AP'),
    'mIoU': ('mIoU', 1.0, 'mIoU'),
    'mIoU_ms': ('mIoU', 1.0, 'mIoU MS'),  # read from work_dirs/<config>_tta/ (tools/test.py --tta)
}
TASK_METRICS = {'detection': ('bbox_mAP', 'segm_mAP'), 'segmentation': ('mIoU',)}

NO_GPU = 'no GPU'
NO_RESULTS = 'no results yet'


@dataclass
class Row:
    """Everything the report says about one config; strings are the cells."""
    config: str
    task: str = '?'
    method: str = '?'
    arch: str = '?'
    params_m: Optional[float] = None
    flops_g: Optional[float] = None
    cells: Dict[str, str] = field(default_factory=dict)
    results: Dict[str, float] = field(default_factory=dict)
    result_source: str = ''

    @property
    def paper(self) -> Optional[Dict[str, float]]:
        if self.method == 'UperNet':
            pub = UPERNET_ADE20K.get(self.arch)
            return None if pub is None else dict(params=pub['params_m'], flops=pub['macs_g'],
                                                 mIoU=pub['miou_ss'], mIoU_ms=pub['miou_ms'])
        return PAPER.get((self.method, self.arch))

    @property
    def flops_input(self) -> Tuple[int, int]:
        """(H, W) the FLOPs are counted at: the published UperNet MACs are at 512x2048."""
        return UPERNET_ADE20K_MACS_INPUT if self.method == 'UperNet' else FLOPS_INPUT[self.task]


# ----------------------------------------------------------------------------------------------
# Configs and models
# ----------------------------------------------------------------------------------------------
def load_config(path: str):
    """Read a config with its custom imports (the mmdet / mmseg plugin)."""
    from mmengine.config import Config
    return Config.fromfile(path)


def describe(cfg) -> Tuple[str, str, str]:
    """``(task, method, backbone arch)`` of a config, read from its model settings."""
    scope = cfg.get('default_scope')
    model = cfg.model
    if scope == 'mmseg' or model.type == 'EncoderDecoder':
        task = 'segmentation'
        head = model.get('decode_head', {}).get('type', '?')
        method = {'FPNHead': 'Semantic FPN', 'UPerHead': 'UperNet'}.get(
            head, f'{model.type}+{head}')
    else:
        task = 'detection'
        method = {'RetinaNet': 'RetinaNet', 'MaskRCNN': 'Mask R-CNN',
                  'CascadeRCNN': 'Cascade Mask R-CNN'}.get(model.type, model.type)
        epochs = (cfg.get('train_cfg') or {}).get('max_epochs')
        if epochs and epochs != 12:  # 3x configs are not the paper's 1x models
            method += f' {epochs // 12}x'
    backbone = model.get('backbone', {})
    arch = backbone.get('arch', backbone.get('type', '?'))
    arch = {s: f'poolformer_{s}' for s in ('s12', 's24', 's36', 'm36', 'm48')}.get(arch, arch)
    return task, method, arch


def build_model(cfg, task: str):
    """Build the model of a config with random weights (no checkpoint file is read)."""
    from mmengine.registry import init_default_scope
    if task == 'segmentation':
        from mmseg.registry import MODELS
        init_default_scope('mmseg')
    else:
        from mmdet.registry import MODELS
        init_default_scope('mmdet')
    model_cfg = cfg.model.copy()
    if 'init_cfg' in model_cfg.get('backbone', {}):
        model_cfg.backbone.init_cfg = None  # Pretrained files are read by init_weights only
    return MODELS.build(model_cfg)


def fake_batch(model, task: str, hw: Tuple[int, int], batch: int = 1) -> dict:
    """A batch as a dataloader yields it: random uint8 images with random annotations."""
    import torch
    h, w = hw
    if task == 'segmentation':
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample
        samples = []
        for _ in range(batch):
            s = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                            pad_shape=(h, w), scale_factor=(1.0, 1.0)))
            s.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, h, w)))
            samples.append(s)
        return dict(inputs=[torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
                            for _ in range(batch)], data_samples=samples)
    from mmdet.testing import demo_mm_inputs
    return demo_mm_inputs(batch_size=batch, image_shapes=[(3, h, w)] * batch,
                          num_items=[5] * batch, num_classes=80,
                          with_mask=getattr(model, 'with_mask', False))


def count_params(model) -> float:
    """Parameters of the built model, in millions."""
    return sum(p.numel() for p in model.parameters()) / 1e6


def _sdpa_macs(inputs, outputs) -> int:
    """Multiply-adds of ``aten::scaled_dot_product_attention``: ``q @ k^T`` and ``attn @ v``.

    mmengine 0.10.7's counter has no handle for it and silently counts 0, which drops the
    self-attention of CAFormer's stages 3-4 (timm runs it fused): CAFormer-S18 at 224x224 counts
    3.90 G without this handle and 4.12 G with it, against the paper's 4.1 G.
    """
    from mmengine.analysis.jit_handles import get_shape
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = 1
    for n in q[:-2]:
        batch *= n
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def count_flops(model, task: str, hw: Tuple[int, int]) -> float:
    """Multiply-adds (G) of one forward of backbone + neck + heads on a ``hw`` image."""
    import torch
    from mmengine.analysis import FlopAnalyzer

    class _Forward(torch.nn.Module):  # binds the data samples; the tracer sees one tensor
        def __init__(self, net, samples):
            super().__init__()
            self.net, self.samples = net, samples

        def forward(self, x):
            return self.net._forward(x, self.samples)

    model.eval()
    data = model.data_preprocessor(fake_batch(model, task, hw), False)
    with torch.no_grad():
        analyzer = FlopAnalyzer(_Forward(model, data['data_samples']), (data['inputs'],))
        analyzer.set_op_handle('aten::scaled_dot_product_attention', _sdpa_macs)
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return analyzer.total() / 1e9


def gpu_speed(model, task: str, hw: Tuple[int, int], train_batch: int,
              repeats: int = 20) -> Tuple[float, float]:
    """Inference latency (s, median of ``test_step`` on one image) and peak training memory
    (MiB, ``torch.cuda.max_memory_allocated`` over one ``train_step`` at ``train_batch``)."""
    import torch
    from mmengine.optim import OptimWrapper
    model.cuda().eval()
    raw = fake_batch(model, task, hw)
    times = []
    with torch.no_grad():
        for i in range(repeats + 5):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.test_step(raw)
            torch.cuda.synchronize()
            if i >= 5:
                times.append(time.perf_counter() - t0)
    model.train()
    wrapper = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-4))
    train_raw = fake_batch(model, task, hw, train_batch)
    model.train_step(train_raw, wrapper)  # warm-up (allocator, cudnn autotuning)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    model.train_step(train_raw, wrapper)
    torch.cuda.synchronize()
    mem = torch.cuda.max_memory_allocated() / 2 ** 20
    model.cpu()
    return statistics.median(times), mem


# ----------------------------------------------------------------------------------------------
# Results the user produced with tools/test.py
# ----------------------------------------------------------------------------------------------
def _json_records(path: Path) -> List[dict]:
    """A json file as mmengine writes them: one object, or one object per line."""
    text = path.read_text()
    try:
        obj = json.loads(text)
        return [obj] if isinstance(obj, dict) else []
    except json.JSONDecodeError:
        records = []
        for line in text.splitlines():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                records.append(obj)
        return records


def find_results(work_dir: Path, metrics: Sequence[str]) -> Tuple[Dict[str, float], str]:
    """Newest evaluation metrics under ``work_dir`` (recursively), in percent.

    ``tools/test.py`` (mmengine's runner) writes ``<timestamp>/<timestamp>.json`` holding the
    metrics; training logs in ``vis_data/`` may hold validation metrics too and are used only
    when no test result exists.

    Returns:
        ``({metric: percent}, 'source description')``; empty dict when nothing was found.
    """
    files = [Path(p) for p in glob.glob(str(work_dir / '**' / '*.json'), recursive=True)]
    # tools/test.py results first, then validation inside training logs; newest first in each.
    files.sort(key=lambda p: ('vis_data' not in p.parts, p.stat().st_mtime), reverse=True)
    for path in files:
        for rec in reversed(_json_records(path)):
            found = {m: float(rec[METRICS[m][0]]) * METRICS[m][1]
                     for m in metrics if METRICS[m][0] in rec}
            if found:
                when = datetime.datetime.fromtimestamp(path.stat().st_mtime)
                return found, f'{path} ({when:%Y-%m-%d %H:%M})'
    return {}, ''


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def _fmt(v: Optional[float], nd: int = 1) -> str:
    return '-' if v is None else f'{v:.{nd}f}'


def _diff(ours: Optional[float], paper: Optional[float], nd: int = 1) -> str:
    if ours is None or paper is None:
        return ''
    return f' ({ours - paper:+.{nd}f})'


def analyse(config: str, work_dirs: Path, flops: bool, device: str) -> Row:
    """Fill one row; any step that fails leaves its cell saying why."""
    import torch
    name = Path(config).stem
    row = Row(config=name)
    try:
        cfg = load_config(config)
        row.task, row.method, row.arch = describe(cfg)
    except Exception as exc:  # a broken config is reported, the others still run
        for key in ('params', 'flops', 'latency', 'memory', *METRICS):
            row.cells[key] = f'config failed to load: {type(exc).__name__}: {exc}'[:160]
        return row
    hw = row.flops_input
    try:
        model = build_model(cfg, row.task)
        row.params_m = count_params(model)
        row.cells['params'] = f'{row.params_m:.2f}'
    except Exception as exc:
        model = None
        row.cells['params'] = f'model failed to build: {type(exc).__name__}: {exc}'[:160]
    if model is None:
        row.cells['flops'] = 'model failed to build'
    elif not flops:
        row.cells['flops'] = 'not measured (--no-flops)'
    else:
        try:
            row.flops_g = count_flops(model, row.task, hw)
            row.cells['flops'] = f'{row.flops_g:.1f}'
        except Exception as exc:
            row.cells['flops'] = f'FLOP count failed: {type(exc).__name__}: {exc}'[:160]
    if device != 'cuda':
        row.cells['latency'] = row.cells['memory'] = NO_GPU
    elif model is None:
        row.cells['latency'] = row.cells['memory'] = 'model failed to build'
    else:
        try:
            batch = int(cfg.train_dataloader.get('batch_size', 2))
            lat, mem = gpu_speed(model, row.task, hw, batch)
            row.cells['latency'] = f'{lat * 1e3:.1f} ms / {1 / lat:.1f} FPS'
            row.cells['memory'] = f'{mem:.0f} MiB (batch {batch})'
        except Exception as exc:
            row.cells['latency'] = row.cells['memory'] = \
                f'GPU run failed: {type(exc).__name__}: {exc}'[:160]
    del model
    metrics = TASK_METRICS[row.task] if row.method != 'RetinaNet' else ('bbox_mAP',)
    row.results, row.result_source = find_results(work_dirs / name, metrics)
    if row.method == 'UperNet':  # multi-scale + flip: tools/test.py --tta's default work dir
        ms, ms_source = find_results(work_dirs / f'{name}_tta', ['mIoU'])
        if ms:
            row.results['mIoU_ms'] = ms['mIoU']
            row.result_source = '; '.join(filter(None, [row.result_source, ms_source]))
        metrics = ('mIoU', 'mIoU_ms')
        if 'mIoU_ms' not in row.results:
            row.cells['mIoU_ms'] = (f'{NO_RESULTS} (no mIoU in {work_dirs / name}_tta/: run '
                                    'tools/test.py --tta)')
    paper = row.paper or {}
    for m in metrics:
        if m in row.cells:
            continue
        if m in row.results:
            row.cells[m] = _fmt(row.results[m]) + _diff(row.results[m], paper.get(m))
        elif (work_dirs / name).is_dir():
            row.cells[m] = f'{NO_RESULTS} (no {METRICS[m][0]!r} in {work_dirs / name}/**/*.json)'
        else:
            row.cells[m] = f'{NO_RESULTS} (no {work_dirs / name}/)'
    return row


def _paper_cell(row: Row, key: str, nd: int = 1) -> str:
    paper = row.paper
    if paper is None:
        return 'not in the paper'
    return _fmt(paper.get(key), nd) if key in paper else '-'


def to_markdown(rows: Sequence[Row], meta: dict) -> str:
    """The report: one table per task, then notes on every convention used."""
    gpu = meta['device'] == 'cuda'
    out = ['# Benchmark report', '',
           f'Generated {meta["date"]} by `{meta["command"]}` on {meta["machine"]} '
           f'(torch {meta["torch"]}, {meta["elapsed_s"]:.0f} s). `make report` regenerates this '
           'file and its plot for all configs.', '',
           f'Paper numbers: {PAPER_SOURCE}. Differences in parentheses are ours minus the '
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
                params += _diff(r.params_m, paper['params'], 2)
            out.append(
                f'| {r.config} | {params} | {_paper_cell(r, "params")} | '
                f'{r.cells.get("flops", "-")} | {r.cells.get("latency", "-")} | '
                f'{r.cells.get("memory", "-")} | '
                + ' | '.join(r.cells.get(m, '- (RetinaNet has no masks)') for m in mets) + ' | '
                + ' | '.join(_paper_cell(r, m) if r.method != 'RetinaNet' or m == 'bbox_mAP'
                             else '-' for m in mets) + ' |')
        out.append('')
    out += _upernet_table([r for r in rows if r.method == 'UperNet'])
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
            '- The plot `benchmark_report.png` shows accuracy against params and FLOPs; paper '
            "points are placed at the FLOPs this tool counts for the paper's architecture "
            '(each config reproduces the paper model, see the params columns).']
    if sources:
        out += ['', 'Result files read:', '']
        out += [f'- {r.config}: `{r.result_source}`' for r in sources]
    return '\n'.join(out) + '\n'


def _upernet_table(rows: Sequence[Row]) -> List[str]:
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
            params += _diff(r.params_m, paper['params'], 1)
        if r.flops_g is not None and 'flops' in paper:
            flops += _diff(r.flops_g, paper['flops'], 0)
        pub = [_fmt(paper.get(k), 0 if k in ('params', 'flops') else 1) if paper
               else 'none published' for k in ('params', 'flops', 'mIoU', 'mIoU_ms')]
        out.append(f'| {r.config} | {params} | {pub[0]} | {flops} | {pub[1]} | '
                   f'{r.cells.get("latency", "-")} | {r.cells.get("memory", "-")} | '
                   f'{r.cells.get("mIoU", "-")} | {pub[2]} | {r.cells.get("mIoU_ms", "-")} | '
                   f'{pub[3]} |')
    return out + ['']


def _plot_upernet(ax, rows: Sequence[Row], xkey: str) -> bool:
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
        mine_any |= _plot_upernet(ax, rows, xkey)
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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0] + ' Writes a markdown '
                                'report and a PNG plot, and prints the report.',
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('configs', nargs='*', help='config files (default: configs/*.py)')
    p.add_argument('--work-dirs', default='work_dirs',
                   help='where tools/test.py wrote results (default: work_dirs)')
    p.add_argument('--out', default='docs/benchmark_report.md', help='markdown report path')
    p.add_argument('--plot', default='docs/benchmark_report.png', help='PNG plot path')
    p.add_argument('--no-flops', action='store_true', help='skip FLOP counting (fast)')
    p.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto',
                   help='cuda measures latency and training memory (default: cuda if present)')
    p.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    return p.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    import torch
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    device = args.device
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    elif device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda, but torch sees no GPU: drop --device or use cpu')
    configs = args.configs or sorted(glob.glob(str(ROOT / 'configs' / '*.py')))
    missing = [c for c in configs if not Path(c).is_file()]
    if missing:
        raise SystemExit(f'config file(s) not found: {missing}')
    if not configs:
        raise SystemExit('no configs: pass config files or add configs/*.py')
    work_dirs = Path(args.work_dirs)
    t0 = time.time()
    rows = []
    with tqdm(configs, desc='report', unit='config', dynamic_ncols=True) as bar:
        for config in bar:
            bar.set_postfix_str(Path(config).stem)
            rows.append(analyse(config, work_dirs, not args.no_flops, device))
    machine = (torch.cuda.get_device_name() if device == 'cuda'
               else f'CPU ({platform.machine()}, {os.cpu_count()} cores)')
    meta = dict(date=datetime.datetime.now().strftime('%Y-%m-%d %H:%M'),
                command=' '.join(['tools/analysis/benchmark_report.py',
                                  *(sys.argv[1:] if argv is None else argv)]),
                machine=machine, torch=torch.__version__, device=device,
                elapsed_s=time.time() - t0)
    md = to_markdown(rows, meta)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    if args.plot:
        plot(rows, Path(args.plot))
    print(md)
    print(f'wrote {out}' + (f' and {args.plot}' if args.plot else ''))
    return md


if __name__ == '__main__':
    main()
