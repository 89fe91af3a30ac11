# Mask R-CNN with a CAFormer-S18 backbone (MetaFormer baselines), COCO 1x, PoolFormer's
# Mask R-CNN recipe. Stage widths 64-128-320-512 as in PoolFormer-S12, so the FPN is unchanged.
# ImageNet weights: timm `caformer_s18` (.safetensors/.pth) or the official release.
_base_ = './mask_rcnn_poolformer_s12.py'

model = dict(
    backbone=dict(
        arch='caformer_s18',
        init_cfg=dict(checkpoint='https://huggingface.co/sail/dl/resolve/main/caformer/caformer_s18.pth')))
