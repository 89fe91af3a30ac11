# RetinaNet with a PoolFormer-S12 backbone on COCO, 1x schedule: the PoolFormer paper's recipe.
# Its published params and box AP (COCO val2017): benchmarks/published.py, POOLFORMER_COCO.
#
# Unchanged from the mmdet base (and equal to the paper's recipe): 12 epochs with LR steps after
# epochs 8 and 11, linear warm-up over 500 iterations from 0.001 x lr, 2 images per GPU on 8 GPUs
# (batch 16; on another total batch size `tools/train.py --auto-scale-lr` scales lr
# linearly from `auto_scale_lr.base_batch_size=16`), resize to (1333, 800) keeping the aspect
# ratio, horizontal flip with p=0.5.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmdet_plugin'], allow_failed_imports=False)

# The one place the S-size stage widths are written (configs of other widths override both).
# The paper's FPN takes all four stages with start_level=1, i.e. the stage-1 output (64 ch) is
# computed but unused, and their RetinaNet runs had no output norm on it. Emitting stages 1-3
# only and starting the FPN at level 0 gives the same FPN parameter names and shapes (released
# checkpoints load) without parameters that receive no gradient (which DDP rejects).
backbone_out_channels = [128, 320, 512]

model = dict(
    backbone=dict(
        _delete_=True,  # ResNet's depth/style/norm_cfg are not MetaFormer arguments
        type='MetaFormer',
        arch='poolformer_s12',
        out_indices=(1, 2, 3),
        # The paper's backbone ignored frozen_stages/norm_eval: nothing is frozen (mmdet base: 1).
        frozen_stages=-1,
        # ImageNet weights: official `poolformer_s12.pth.tar`, a timm or an mmpretrain file.
        # Only read when training starts (init_weights), so building the model needs no file.
        init_cfg=dict(type='Pretrained', checkpoint='https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s12.pth.tar')),
    neck=dict(
        in_channels=backbone_out_channels,
        start_level=0,  # mmdet base: 1 (its in_channels list starts with ResNet's stage 1)
    ),
    # The same loss in float32, so bf16 mixed precision runs on CUDA (mmcv's focal-loss kernel
    # has no bf16 version); identical in fp32 and fp16.
    bbox_head=dict(loss_cls=dict(type='FocalLossFP32')))

# Paper: AdamW, lr 1e-4, weight decay 1e-4, no gradient clipping (mmdet base: SGD lr 0.01).
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, weight_decay=1e-4))
