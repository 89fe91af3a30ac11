"""Semantic FPN with a PoolFormer-S12 backbone on ADE20K: the PoolFormer paper's segmentation recipe.

40k iterations at batch 32 (8 GPUs x 4 images), AdamW lr 2e-4 / weight decay 1e-4, poly decay
(power 0.9) to 0, 512x512 crops. Published params and mIoU (ADE20K val, single scale):
``benchmarks/published.py`` (POOLFORMER_ADE20K).

Set ``model.backbone.init_cfg.checkpoint`` to the ImageNet-1k PoolFormer-S12 weights (the official
``poolformer_s12.pth.tar``, a timm or an mmpretrain checkpoint); the file is read when training
starts, not when the model is built. Needs mmseg only (no mmdet, no mmpretrain).
"""
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_40k.py',
]
custom_imports = dict(imports=['mmseg_plugin'], allow_failed_imports=False)
# mmseg's visualizer, made to draw on any image layout (mmseg's browse_dataset.py needs it)
visualizer = dict(type='ContiguousSegLocalVisualizer')

crop_size = (512, 512)
model = dict(
    # Pads training crops of images smaller than 512 px up to the crop size.
    data_preprocessor=dict(size=crop_size),
    pretrained=None,  # the base's ResNet weights; the backbone's init_cfg names its own
    backbone=dict(
        _delete_=True,
        type='MetaFormer',
        arch='poolformer_s12',
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s12.pth.tar')),
    neck=dict(in_channels=[64, 128, 320, 512]),  # PoolFormer-S stage widths (base: ResNet-50's)
    decode_head=dict(num_classes=150))  # ADE20K (base: 19 Cityscapes classes)

# Test: keep-ratio resize to (2048, 512) as the base, then sides to a multiple of 32 (the paper's
# test pipeline; the base has no ResizeToMultiple).
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# Batch 32 = 8 GPUs x 4 images (the base's per-GPU batch_size=4). AdamW replaces the base's SGD.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4))
# Poly decay to 0 over the 40k iterations (base: eta_min=1e-4, an SGD floor).
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=40000, by_epoch=False),
]
# lr 2e-4 belongs to batch 32: training on fewer GPUs, set auto_scale_lr.enable=True to scale it.
auto_scale_lr = dict(enable=False, base_batch_size=32)
