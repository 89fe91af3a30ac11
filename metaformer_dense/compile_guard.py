"""``compile=True``: a compiled forward that must agree with eager before it is trusted.

torch's compiler can return wrong numbers without an error. On an H200 with torch 2.11, inductor
compiled the PoolFormer-S12 forward at 800x1216 so that the normalised stage-3 output (the one a
further stage reads too) differed from eager by up to 37, while each module compiled alone and
timm's own model agreed to 1e-6 (benchmarks/results/gpu_check.md). A detector trained on such
features learns from garbage, silently.

So the first call for each input signature (shape, dtype, device, autocast, train/eval, grad)
also runs the eager forward and compares: past the tolerance, the backbone warns, names the
difference, and runs eager from then on. Calls whose outputs are random (training with
stochastic depth or dropout active) cannot be compared; they are checked on the first
deterministic call instead. ``compile=dict(verify=False)`` skips the check.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence, Tuple

import torch
from torch import nn

#: Largest accepted max|compiled - eager| / max|eager|, per output: fp32 (TF32 convolutions and
#: reordered sums stay below 1e-3) and reduced precision (autocast, half / bf16 weights).
TOLERANCE = {'fp32': 1e-2, 'reduced': 5e-2}


def _random_outputs(module: nn.Module) -> bool:
    """Whether a forward of ``module`` now draws random numbers (drop path, dropout)."""
    return any(m.training and (getattr(m, 'drop_prob', 0.0) or 0.0) > 0
               or m.training and isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0
               for m in module.modules())


def _signature(x: torch.Tensor, module: nn.Module) -> tuple:
    dev = x.device.type
    amp = torch.is_autocast_enabled(dev) if dev in ('cpu', 'cuda') else False
    return (tuple(x.shape), x.dtype, dev, amp, module.training, torch.is_grad_enabled())


def worst_difference(out: Sequence[torch.Tensor], ref: Sequence[torch.Tensor]) -> float:
    """Largest max|out - ref| / max|ref| over the outputs (inf where out is not finite)."""
    worst = 0.0
    for o, r in zip(out, ref):
        o, r = o.detach().float(), r.detach().float()
        if not torch.isfinite(o).all() and torch.isfinite(r).all():
            return float('inf')
        scale = max(r.abs().max().item(), 1e-6)
        worst = max(worst, (o - r).abs().max().item() / scale)
    return worst


class CheckedCompile:
    """A module's ``torch.compile``-d forward that is compared with eager per input signature."""

    def __init__(self, module: nn.Module, eager: Callable, cfg: dict):
        cfg = dict(cfg)
        self.verify = bool(cfg.pop('verify', True))
        self.compiled = torch.compile(eager, **cfg)
        self.eager = eager
        self.name = type(module).__name__
        self.checked: set = set()
        #: Why the compiled forward was rejected (None while it is trusted).
        self.rejected = None

    def __call__(self, module: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if self.rejected is not None:
            return self.eager(x)
        out = self.compiled(x)
        key = _signature(x, module)
        if not self.verify or key in self.checked or _random_outputs(module):
            return out
        with torch.no_grad():
            ref = self.eager(x)
        reduced = key[3] or x.dtype in (torch.float16, torch.bfloat16) or any(
            p.dtype in (torch.float16, torch.bfloat16) for p in module.parameters())
        tol = TOLERANCE['reduced' if reduced else 'fp32']
        diff = worst_difference(out, ref)
        if diff <= tol:
            self.checked.add(key)
            return out
        self.rejected = (f'compiled outputs differ from eager by {diff:.3g} x max|eager| '
                         f'(tolerance {tol:g}) for input {tuple(x.shape)} {x.dtype} on '
                         f'{x.device.type}')
        warnings.warn(f'{self.name}(compile=...): {self.rejected}. torch.compile produced wrong '
                      'numbers here, so this backbone runs eager from now on. Set compile=False '
                      'to skip compiling, or try another torch version (docs/speed.md).',
                      RuntimeWarning, stacklevel=3)
        return self.eager(x) if torch.is_grad_enabled() else ref
