# Mask R-CNN with a PoolFormer-S12 backbone on COCO, 1x schedule: the PoolFormer paper's recipe.
# Its published params, box and mask AP (COCO val2017): benchmarks/published.py, POOLFORMER_COCO.
#
# Unchanged from the mmdet base (and equal to the paper's recipe): 12 epochs with LR steps after
# epochs 8 and 11, linear warm-up over 500 iterations from 0.001 x lr, 2 images per GPU on 8 GPUs
# (batch 16; on another total batch size `tools/train.py --auto-scale-lr` scales lr
# linearly from `auto_scale_lr.base_batch_size=16`), resize to (1333, 800) keeping the aspect
# ratio, horizontal flip with p=0.5,
# FPN over all four stages (start_level=0) with 5 outputs.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmdet_plugin'], allow_failed_imports=False)

# The one place the S-size stage widths are written (configs of other widths override both).
backbone_out_channels = [64, 128, 320, 512]

model = dict(
    backbone=dict(
        _delete_=True,  # ResNet's depth/style/norm_cfg are not MetaFormer arguments
        type='MetaFormer',
        arch='poolformer_s12',
        out_indices=(0, 1, 2, 3),
        # The paper's backbone ignored frozen_stages/norm_eval: nothing is frozen (mmdet base: 1).
        frozen_stages=-1,
        # ImageNet weights: official `poolformer_s12.pth.tar`, a timm or an mmpretrain file.
        # Only read when training starts (init_weights), so building the model needs no file.
        init_cfg=dict(type='Pretrained', checkpoint='https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s12.pth.tar')),
    neck=dict(in_channels=backbone_out_channels))

# Paper: AdamW, lr 2e-4, weight decay 1e-4, no gradient clipping (mmdet base: SGD lr 0.02).
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, weight_decay=1e-4))
