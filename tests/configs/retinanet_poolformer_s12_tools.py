# The demo RetinaNet-PoolFormer-S12 on data/tiny_coco, cut down to what tests/test_tools.py needs
# to exercise the tools in seconds on a CPU: 96 px images, 2-image subsets, an iteration-based
# 6-iteration schedule with a checkpoint every 2 iterations and an lr that changes every
# iteration (so a resumed run's lr shows whether the schedule resumed too).
_base_ = '../../configs/demo/retinanet_poolformer_s12_tiny.py'

img_scale = (96, 96)  # demo: 160
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
# `indices` keeps the first N images of each split.
train_dataloader = dict(
    batch_size=1, sampler=dict(type='InfiniteSampler'),  # iteration-based loop
    dataset=dict(indices=2, pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, dataset=dict(indices=2, pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 6
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=max_iters)
]
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(by_epoch=False, interval=2, max_keep_ckpts=2))
log_processor = dict(by_epoch=False, window_size=1)
