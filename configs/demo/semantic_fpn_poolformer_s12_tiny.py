"""The full Semantic FPN PoolFormer-S12 recipe, shrunk to train on CPU in minutes on data/tiny_ade20k.

Changes against ``configs/semantic_fpn_poolformer_s12.py`` (everything else, model included, is
inherited unchanged):

* data root: the carried synthetic set ``data/tiny_ade20k`` (``tools/make_tiny_ade20k.py``);
* sizes: images are 160-256 px, so 128x128 crops and a (512, 128) resize scale instead of 512 / (2048, 512);
* schedule: 40 iterations (base 40k), poly decay over them, evaluated (mIoU) at the end;
* backbone ``init_cfg=None``: random initialisation, because the ImageNet checkpoint is a download
  the demo must not need (no network here); the scenes are simple enough to learn from scratch.

Run: ``make demo-seg``.
"""
_base_ = ['../semantic_fpn_poolformer_s12.py']

data_root = 'data/tiny_ade20k'
crop_size = (128, 128)  # base 512x512: the images are only 160-256 px wide
scale = (512, 128)  # base (2048, 512), shrunk by the same factor of 4
max_iters = 40  # base 40k: the demo finishes in minutes on a CPU

model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(init_cfg=None))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=max_iters, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=max_iters))
