# Mask R-CNN 3x (multi-scale training) with a PoolFormer-S36 backbone on COCO:
# the ConvNeXt-zoo recipe of mask_rcnn_3x_ms_convformer_s18.py
# (which says where each setting comes from).
_base_ = './mask_rcnn_3x_ms_convformer_s18.py'

model = dict(
    backbone=dict(
        arch='poolformer_s36',
        # drop path 0.4 (inherited): 31 M backbone, the ConvNeXt-T class (< 35 M)
        init_cfg=dict(checkpoint='https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s36.pth.tar')))
