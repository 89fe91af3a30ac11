"""Shared test helpers: backbones whose every block changes the result."""
import torch

from metaformer_dense import MetaFormerBackbone


def randomized(arch: str, seed: int = 1, **kw) -> MetaFormerBackbone:
    """A backbone with perturbed weights and layer scales of 0.1-0.5.

    The ImageNet init leaves layer scales at 1e-5, which makes the blocks nearly inert: a
    wrongly computed block would then hide behind float rounding.
    """
    model = MetaFormerBackbone(arch, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'layer_scale' in name:
                p.copy_(0.1 + 0.4 * torch.rand(p.shape, generator=g))
            else:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model
