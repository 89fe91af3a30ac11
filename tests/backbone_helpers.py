"""Shared test helpers: backbones whose every block changes the result, the same weights through
timm's modules, and counting which code path ran."""
import copy
from typing import Callable, List

import torch

from metaformer_dense import MetaFormerBackbone


def randomized(arch: str, seed: int = 1, **kw) -> MetaFormerBackbone:
    """A backbone with perturbed weights and layer scales of 0.1-0.5.

    The ImageNet init leaves layer scales at 1e-5, which makes the blocks nearly inert: a
    wrongly computed block would then hide behind float rounding.
    """
    with torch.random.fork_rng(devices=[]):  # the same model every run (RandFormer's mixing
        torch.manual_seed(seed)               # matrices and the inits draw from the global RNG)
        model = MetaFormerBackbone(arch, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'layer_scale' in name:
                p.copy_(0.1 + 0.4 * torch.rand(p.shape, generator=g))
            else:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def timm_modules_copy(model: MetaFormerBackbone) -> MetaFormerBackbone:
    """The same weights through timm's modules (the stock NCHW path, no CPU fast path)."""
    ref = copy.deepcopy(model)
    ref.channels_last = False
    return ref


def record_calls(monkeypatch, owner, name: str,
                 what: Callable = lambda first, *rest: first) -> List:
    """Wrap ``owner.name`` (a function or a method) so that each call appends
    ``what(*args)`` to the returned list; monkeypatch undoes it after the test."""
    calls = []
    real = getattr(owner, name)

    def recording(*args, **kwargs):
        calls.append(what(*args))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, recording)
    return calls


def small_chunks(monkeypatch) -> None:
    """Several MLP row chunks per stage at the tests' sizes, the last one partial."""
    from metaformer_dense import chunked_mlp
    monkeypatch.setattr(chunked_mlp, 'CHUNK_BYTES', 64 * 4 * 4 * 64)


def quick_compile_backbone(arch: str, compile: bool = False) -> MetaFormerBackbone:
    """MetaFormerBackbone whose compile=True runs dynamo's graphs eagerly: seconds, not minutes."""
    return MetaFormerBackbone(arch, compile=dict(backend='eager') if compile else False)
