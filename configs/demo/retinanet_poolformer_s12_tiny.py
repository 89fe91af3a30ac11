# RetinaNet-PoolFormer-S12 on the carried tiny shapes set (data/tiny_coco, 3 classes), sized to
# train from scratch on a CPU in minutes. Model and recipe are the full COCO config's; only the
# data, image size, initialisation, batch size, schedule and the head's GroupNorm differ (each
# says why).
_base_ = '../retinanet_poolformer_s12.py'

data_root = 'data/tiny_coco/'
metainfo = dict(
    classes=('circle', 'square', 'triangle'),
    palette=[(220, 20, 60), (0, 160, 60), (30, 60, 230)])
# Images are 128-160 px with shapes of 40-95 px; 160 px keeps them about native size (COCO:
# 1333x800). The heads' cost grows with image area, so this is what makes CPU training quick.
img_scale = (160, 160)

model = dict(
    # No ImageNet weights: the demo must run without downloads, so the backbone starts from
    # random init (the tiny set is easy enough to learn from scratch).
    backbone=dict(init_cfg=None),
    bbox_head=dict(
        num_classes=len(metainfo['classes']),
        # GroupNorm in the head's conv towers, as recipes that train detectors from scratch use:
        # without it the head barely learned in this budget (20 epochs: box mAP 0.170 without,
        # 0.418 with it, both at batch 2; benchmarks/results/learning_detection.md records this
        # config).
        norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=2,  # 48 training images -> 24 iterations per epoch: from scratch, twice the
    # updates for the same compute learned better than batch 4 (20 epochs, GroupNorm head: box
    # mAP 0.418 vs 0.314)
    num_workers=0,  # decoding ~10 KB JPEGs is cheaper than worker processes on 2 cores
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

# Schedule: 1x on COCO is ~88k iterations; here 20 epochs x 24 iterations, warm-up 50 iterations
# (COCO: 500), LR steps after epochs 13 and 18 (1x's steps at 8/12 and 11/12 of the run).
max_epochs = 20
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[13, 18],
         gamma=0.1)
]
# From scratch: 3x the ImageNet-initialised lr (1e-4). 1e-3 made the loss spike (mAP 0 by epoch 6).
optim_wrapper = dict(optimizer=dict(lr=3e-4))

default_hooks = dict(
    logger=dict(interval=6),  # COCO: 50; an epoch here is 24 iterations
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
log_processor = dict(window_size=6)
randomness = dict(seed=0)  # reproducible demo runs
