"""Where the time of one CPU detector training step goes, the toolkit's backbone next to timm's.

Builds RetinaNet-S12 and Mask R-CNN-S12 from their configs (random weights), and for each runs
``model.train_step`` (data preprocessing, forward, losses, backward, AdamW update) with the
toolkit backbone and with timm's ``features_only`` model carrying the same weights (plus the
same output norms), interleaved repeat by repeat. Each step is split into sections by timing
the methods that compute them (no module hooks, which would make the backbone step aside):

* ``preprocess``: ``data_preprocessor``;  ``backbone fwd``; ``neck fwd``;
* ``heads fwd+loss``: everything else in the forward (head convolutions, anchors, losses),
  of which ``targets`` is the assigners and samplers (``get_targets`` / RoI sampling);
* ``backward (neck+heads)``: ``loss.backward()`` down to the backbone's outputs (the neck sees
  them as detached leaves), then ``backward (backbone)``: ``torch.autograd.backward`` from the
  backbone's real outputs with the gradients that reached the leaves (the same total work);
* ``optimizer``: the rest of the step (AdamW update, zeroing gradients).

Medians over the repeats, with the machine's load average: on a shared CPU, compare the two
backbones inside one run only.

Usage::

    python -m benchmarks.studies.profile_step                     # ~10 min on 2 CPU cores
    python -m benchmarks.studies.profile_step --input 400x608 --repeats 2   # quicker
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import shlex
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import nn

from benchmarks.common import REPO, STUDY_RESULTS, parse_size, write_record
from benchmarks.environment import describe, machine_info, versions

CONFIGS = ('configs/retinanet_poolformer_s12.py', 'configs/mask_rcnn_poolformer_s12.py')
SECTIONS = ('preprocess', 'backbone fwd', 'neck fwd', 'heads fwd+loss', 'targets',
            'backward (neck+heads)', 'backward (backbone)', 'optimizer', 'step')


class _TimmBackbone(nn.Module):
    """timm's ``features_only`` stages followed by the toolkit backbone's output norms."""

    def __init__(self, ours: nn.Module):
        super().__init__()
        import timm
        self.features = timm.create_model(ours.arch, features_only=True,
                                          out_indices=ours.out_indices)
        state = ours.state_dict()
        self.features.load_state_dict({k: state[k.replace('stages_', 'stages.', 1)].contiguous()
                                        for k in self.features.state_dict()})
        self.norms = nn.ModuleList(copy.deepcopy(ours.out_norms[str(i)])
                                   for i in ours.out_indices)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(n(f) for n, f in zip(self.norms, self.features(x)))


class _Clock:
    """Accumulates seconds per section; wraps bound methods of one detector instance."""

    def __init__(self):
        self.acc: Dict[str, float] = defaultdict(float)
        self.cut: List[Tuple[torch.Tensor, torch.Tensor]] = []  # (backbone output, leaf)

    def wrap(self, obj, name: str, section: str, cut_outputs: bool = False) -> None:
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.acc[section] += time.perf_counter() - t0
            if cut_outputs and torch.is_grad_enabled():
                leaves = tuple(o.detach().requires_grad_() for o in out)
                self.cut = list(zip(out, leaves))
                return leaves
            return out

        setattr(obj, name, timed)


def build(config: str, seed: int = 0) -> Dict[str, nn.Module]:
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    import mmdet_plugin  # noqa: F401  (registers type='MetaFormer')

    cfg = Config.fromfile(str(REPO / config))
    cfg.model.backbone.init_cfg = None  # random weights, no ImageNet file needed
    init_default_scope('mmdet')
    torch.manual_seed(seed)
    ours = MODELS.build(cfg.model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # layer scales large enough that every block matters
        for name, p in ours.backbone.named_parameters():
            if 'layer_scale' in name:
                p.copy_(0.1 + 0.2 * torch.rand(p.shape, generator=g))
    theirs = copy.deepcopy(ours)
    theirs.backbone = _TimmBackbone(ours.backbone)
    return {'toolkit': ours, 'timm': theirs}


def instrument(det: nn.Module) -> _Clock:
    clock = _Clock()
    clock.wrap(det.data_preprocessor, 'forward', 'preprocess')
    clock.wrap(det.backbone, 'forward', 'backbone fwd', cut_outputs=True)
    clock.wrap(det.neck, 'forward', 'neck fwd')
    heads = [getattr(det, n) for n in ('bbox_head', 'rpn_head') if hasattr(det, n)]
    for h in heads:
        clock.wrap(h, 'get_targets', 'targets')
    if hasattr(det, 'roi_head'):
        for s in ('bbox_sampler', 'bbox_assigner'):
            if hasattr(det.roi_head, s):
                part = getattr(det.roi_head, s)
                clock.wrap(part, 'sample' if s == 'bbox_sampler' else 'assign', 'targets')
    return clock


def one_step(det: nn.Module, clock: _Clock, data: dict, optim) -> Dict[str, float]:
    clock.acc.clear()
    clock.cut = []
    t0 = time.perf_counter()
    with optim.optim_context(det):
        batch = det.data_preprocessor(data, True)
        losses = det._run_forward(batch, mode='loss')
    loss, _ = det.parse_losses(losses)
    t_fwd = time.perf_counter()
    loss.backward()
    t_mid = time.perf_counter()
    outs, leaves = zip(*clock.cut)
    torch.autograd.backward(outs, [leaf.grad for leaf in leaves])
    t_bwd = time.perf_counter()
    optim.step()
    optim.zero_grad()
    t_end = time.perf_counter()
    a = dict(clock.acc)
    fwd = t_fwd - t0
    return {'preprocess': a.get('preprocess', 0.), 'backbone fwd': a.get('backbone fwd', 0.),
            'neck fwd': a.get('neck fwd', 0.),
            'heads fwd+loss': fwd - sum(a.get(k, 0.) for k in
                                        ('preprocess', 'backbone fwd', 'neck fwd')),
            'targets': a.get('targets', 0.),
            'backward (neck+heads)': t_mid - t_fwd, 'backward (backbone)': t_bwd - t_mid,
            'optimizer': t_end - t_bwd, 'step': t_end - t0}


def profile_config(config: str, batch: int, size: Tuple[int, int], repeats: int) -> dict:
    from mmdet.testing import demo_mm_inputs
    from mmengine.optim import OptimWrapper

    dets = build(config)
    data = demo_mm_inputs(batch_size=batch, image_shapes=[(3, *size)] * batch,
                          num_items=[5] * batch, num_classes=80, with_mask='mask' in config)
    clocks, optims, states = {}, {}, {}
    for k, det in dets.items():
        det.train()
        clocks[k] = instrument(det)
        optims[k] = OptimWrapper(torch.optim.AdamW(det.parameters(), lr=1e-4))
        states[k] = {n: v.clone() for n, v in det.state_dict().items()}
    times: Dict[str, List[Dict[str, float]]] = {k: [] for k in dets}
    names = list(dets)
    for r in range(repeats + 1):  # the first round warms up
        for k in names[r % 2:] + names[:r % 2]:
            torch.manual_seed(r)  # the same RoI sampling for both
            t = one_step(dets[k], clocks[k], data, optims[k])
            dets[k].load_state_dict(states[k])  # every step from the same weights
            if r:
                times[k].append(t)
            print(config, k, {s: round(v, 3) for s, v in t.items()}, flush=True)
    med = {k: {s: statistics.median(t[s] for t in v) for s in SECTIONS}
           for k, v in times.items()}
    return dict(config=config, batch=batch, input=list(size), repeats=repeats, median_s=med,
                times_s=times)


def to_markdown(rec: dict) -> str:
    lines = ['# CPU training step: where the time goes (toolkit backbone vs timm)', '',
             f'Recorded {rec["date"]} by `{rec["command"]}` on '
             f'{describe(rec["machine"], rec["versions"])}; load average before/after: '
             f'{rec["load_before"]}'
             f' / {rec["load_after"]} (a shared machine: compare within this run only).', '',
             'Medians of the timed steps (one warm-up step first), the two backbones '
             'interleaved step by step with the same weights and data. `targets` is part of '
             '`heads fwd+loss`; `step` is the whole `train_step`-equivalent. Ratio = timm / '
             'toolkit (above 1: the toolkit is faster).', '']
    for r in rec['runs']:
        m = r['median_s']
        lines += [f'## {r["config"]}, batch {r["batch"]}, {r["input"][0]}x{r["input"][1]}, '
                  f'{r["repeats"]} timed steps', '',
                  '| section | toolkit (s) | timm (s) | timm / toolkit | toolkit share of step |',
                  '|---|---|---|---|---|']
        for s in SECTIONS:
            a, b = m['toolkit'][s], m['timm'][s]
            ratio = f'{b / a:.2f}x' if a > 1e-4 else '-'
            lines.append(f'| {s} | {a:.3f} | {b:.3f} | {ratio} | '
                         f'{a / m["toolkit"]["step"]:.0%} |')
        lines.append('')
    return '\n'.join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--configs', nargs='+', default=list(CONFIGS))
    p.add_argument('--input', type=parse_size, default='800x1216',
                   help='HxW of the training images')
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--out', default=str(STUDY_RESULTS / 'profile_step_cpu'),
                   help='record path without extension (.json and .md are written)')
    args = p.parse_args(argv)
    size = args.input
    rec = dict(date=datetime.datetime.now().isoformat(timespec='seconds'),
               command=shlex.join(['python', '-m', 'benchmarks.studies.profile_step']
                                  + (argv or sys.argv[1:])),
               machine=machine_info(torch.device('cpu')), versions=versions(),
               load_before=[round(v, 2) for v in os.getloadavg()])
    rec['runs'] = [profile_config(c, args.batch, size, args.repeats) for c in args.configs]
    rec['load_after'] = [round(v, 2) for v in os.getloadavg()]
    write_record(args.out, rec, to_markdown(rec))
    return rec


if __name__ == '__main__':
    main()
