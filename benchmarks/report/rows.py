"""One row of the report: a config's measurements and results next to the published numbers."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

from benchmarks.published import (POOLFORMER_ADE20K, POOLFORMER_COCO, UPERNET_ADE20K,
                                  UPERNET_ADE20K_MACS_INPUT)
from metaformer_runner import load_config, read_metrics

from .measure import build_model, count_flops, count_params, describe, gpu_speed

#: (method, backbone arch) -> published params (M) and metrics (%).
PAPER = {**POOLFORMER_COCO, **POOLFORMER_ADE20K}

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
        """The published numbers for this config's method and arch, if any."""
        if self.method == 'UperNet':
            pub = UPERNET_ADE20K.get(self.arch)
            return None if pub is None else dict(params=pub['params_m'], flops=pub['macs_g'],
                                                 mIoU=pub['miou_ss'], mIoU_ms=pub['miou_ms'])
        return PAPER.get((self.method, self.arch))

    @property
    def flops_input(self):
        """(H, W) the FLOPs are counted at: the published UperNet MACs are at 512x2048."""
        return UPERNET_ADE20K_MACS_INPUT if self.method == 'UperNet' else FLOPS_INPUT[self.task]


def fmt(v: Optional[float], nd: int = 1) -> str:
    """A number for a cell, ``-`` when there is none."""
    return '-' if v is None else f'{v:.{nd}f}'


def diff(ours: Optional[float], paper: Optional[float], nd: int = 1) -> str:
    """`` (+1.2)``: ours minus the paper's, or nothing when either is missing."""
    if ours is None or paper is None:
        return ''
    return f' ({ours - paper:+.{nd}f})'


def analyse(config: str, work_dirs: Path, flops: bool, device: str) -> Row:
    """Fill one row; any step that fails leaves its cell saying why."""
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
    logged, row.result_source = read_metrics(work_dirs / name, [METRICS[m][0] for m in metrics])
    row.results = {m: logged[METRICS[m][0]] * METRICS[m][1] for m in metrics
                   if METRICS[m][0] in logged}  # in percent
    if row.method == 'UperNet':  # multi-scale + flip: tools/test.py --tta's default work dir
        ms, ms_source = read_metrics(work_dirs / f'{name}_tta', ['mIoU'])
        if 'mIoU' in ms:
            row.results['mIoU_ms'] = ms['mIoU']
            row.result_source = '; '.join(filter(None, [row.result_source, ms_source]))
        else:
            row.cells['mIoU_ms'] = (f'{NO_RESULTS} (no mIoU in {work_dirs / name}_tta/: run '
                                    'tools/test.py --tta)')
        metrics = ('mIoU', 'mIoU_ms')
    paper = row.paper or {}
    for m in metrics:
        if m in row.cells:
            continue
        if m in row.results:
            row.cells[m] = fmt(row.results[m]) + diff(row.results[m], paper.get(m))
        elif (work_dirs / name).is_dir():
            row.cells[m] = f'{NO_RESULTS} (no {METRICS[m][0]!r} in {work_dirs / name}/**/*.json)'
        else:
            row.cells[m] = f'{NO_RESULTS} (no {work_dirs / name}/)'
    return row
