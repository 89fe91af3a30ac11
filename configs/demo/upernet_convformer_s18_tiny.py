"""UperNet-ConvFormer-S18 (the 160k ADE20K recipe) shrunk to train on a CPU on data/tiny_ade20k.

Changes against ``configs/upernet_convformer_s18.py`` (model, optimizer and the rest inherited):

* data root: the carried synthetic set ``data/tiny_ade20k`` (``tools/make_tiny_ade20k.py``);
* sizes: images are 160-256 px, so 128x128 crops and a (512, 128) test scale instead of
  512 / (2048, 512), and the multi-scale + flip test (``--tta``) scales that by the same ratios;
* schedule: 20 iterations (base 160k), warm-up 5 (base 1500), evaluated at the end;
* batch 2 on one process (base 2 x 8 GPUs; the heads' BatchNorm needs at least 2 images);
* backbone ``init_cfg=None``: random initialisation, no ImageNet download needed.
"""
_base_ = ['../upernet_convformer_s18.py']

data_root = 'data/tiny_ade20k'
crop_size = (128, 128)  # base 512x512: the images are only 160-256 px wide
test_scale = (512, 128)  # base (2048, 512), shrunk by the same factor of 4
max_iters = 20  # base 160k

model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(init_cfg=None))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=test_scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=test_scale, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(int(test_scale[0] * r), int(test_scale[1] * r)),
              keep_ratio=True) for r in [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]],
        [dict(type='RandomFlip', prob=0.0, direction='horizontal'),
         dict(type='RandomFlip', prob=1.0, direction='horizontal')],
        [dict(type='LoadAnnotations')],
        [dict(type='PackSegInputs')],
    ]),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=5),
    dict(type='PolyLR', power=1.0, eta_min=0.0, begin=5, end=max_iters, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval=max_iters))
