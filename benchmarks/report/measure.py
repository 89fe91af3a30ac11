"""What the report measures on a built model: params, FLOPs, GPU latency and training memory.

FLOPs here are multiply-adds (MACs), the quantity the paper calls FLOPs, counted by
``mmengine.analysis.FlopAnalyzer`` (the counter behind ``get_model_complexity_info``; used
directly so that every model is traced once) over backbone + neck + heads without
post-processing. For Mask R-CNN the RoI heads run on the proposals the RPN keeps for the random
input (up to the test config's 1000; the mask head on the first 100), as mmdet's own FLOPs tool does.
"""
from __future__ import annotations

import statistics
import time
from typing import Tuple

from metaformer_dense.backbone import SHORT_NAMES

__all__ = ['describe', 'build_model', 'fake_batch', 'count_params', 'count_flops', 'gpu_speed']


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
    arch = SHORT_NAMES.get(arch, arch)
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
