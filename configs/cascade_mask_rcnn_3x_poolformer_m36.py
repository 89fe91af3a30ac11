# Cascade Mask R-CNN 3x (4conv1fc, GIoU) with a PoolFormer-M36 backbone on COCO:
# the ConvNeXt-zoo recipe of cascade_mask_rcnn_3x_convformer_s18.py
# (which says where each setting comes from).
_base_ = './cascade_mask_rcnn_3x_convformer_s18.py'

backbone_out_channels = [96, 192, 384, 768]  # M-size widths (S: 64-128-320-512)

model = dict(
    backbone=dict(
        arch='poolformer_m36',
        drop_path_rate=0.6,  # 56 M backbone: the ConvNeXt-S class (>= 35 M)
        init_cfg=dict(checkpoint='https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_m36.pth.tar')),
    neck=dict(in_channels=backbone_out_channels))
