# Cascade Mask R-CNN 3x with ConvFormer-S18 (the ConvNeXt-zoo recipe) shrunk to the carried tiny shapes
# set (data/tiny_coco, 3 classes, 128-160 px images) so it trains on a CPU. Model, optimizer
# (layer-wise lr decay included) and the multi-scale augmentation are the full config's; the
# data, image sizes, initialisation and schedule differ (each says why).
_base_ = '../cascade_mask_rcnn_3x_convformer_s18.py'

data_root = 'data/tiny_coco/'
metainfo = dict(
    classes=('circle', 'square', 'triangle'),
    palette=[(220, 20, 60), (0, 160, 60), (30, 60, 230)])
num_classes = len(metainfo['classes'])

# COCO: short side 480-800 (long side <= 1333), or resize 400-600 + crop 384-600 + resize;
# here the same two branches at about 1/5 of the size (the images are 128-160 px).
ms_scales = [(96, 160), (112, 160), (128, 160), (144, 160), (160, 160)]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoice', transforms=[
        [dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True)],
        [dict(type='RandomChoiceResize', scales=[(80, 160), (100, 160), (120, 160)],
              keep_ratio=True),
         dict(type='RandomCrop', crop_type='absolute_range', crop_size=(76, 120),
              allow_negative_crop=True),
         dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True)],
    ]),
    dict(type='PackDetInputs'),
]
test_scale = (160, 160)  # COCO: (1333, 800)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=test_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
# --tta: the full config's three scales (1333, 800), (666, 400), (2000, 1200) at 1/5 size, x flip.
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=s, keep_ratio=True) for s in [(160, 160), (80, 80), (240, 240)]],
        [dict(type='RandomFlip', prob=1.0), dict(type='RandomFlip', prob=0.0)],
        [dict(type='LoadAnnotations', with_bbox=True, with_mask=True)],
        [dict(type='PackDetInputs',
              meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor',
                         'flip', 'flip_direction'))],
    ]),
]

model = dict(
    # No ImageNet weights: the demo must run without downloads (random init).
    backbone=dict(init_cfg=None),
    roi_head=dict(
        # the three cascade stages' box heads (a list in the base, so written out whole)
        bbox_head=[dict(_base_.model.roi_head.bbox_head[i], num_classes=num_classes)
                   for i in range(3)],
        mask_head=dict(num_classes=num_classes)),
    # 100 proposals per image (COCO: 2000 in training, 1000 in testing), so at most ~100 of
    # the 512 RoIs the sampler may take: the images hold a few shapes each, and RoI heads
    # dominate CPU time.
    train_cfg=dict(rpn_proposal=dict(max_per_img=100)),
    test_cfg=dict(rpn=dict(max_per_img=100)))

train_dataloader = dict(
    batch_size=2,  # COCO: 2 per GPU x 8
    num_workers=0,  # decoding ~10 KB JPEGs is cheaper than worker processes on 2 cores
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

# Schedule: 3x on COCO is 36 epochs with LR steps after 27 and 33; here 3 epochs x 24 iterations,
# warm-up 20 iterations (COCO: 1000), one LR step after epoch 2.
max_epochs = 3
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=20),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[2],
         gamma=0.1),
]
default_hooks = dict(
    logger=dict(interval=6),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
log_processor = dict(window_size=6)
randomness = dict(seed=0)
