# Cascade Mask R-CNN 3x (4conv1fc, GIoU) with a CAFormer-M36 backbone on COCO:
# the ConvNeXt-zoo recipe of cascade_mask_rcnn_3x_convformer_s18.py
# (which says where each setting comes from).
_base_ = './cascade_mask_rcnn_3x_convformer_s18.py'

backbone_out_channels = [96, 192, 384, 576]  # M-size widths (S: 64-128-320-512)

model = dict(
    backbone=dict(
        arch='caformer_m36',
        drop_path_rate=0.6,  # 56 M backbone: the ConvNeXt-S class (>= 35 M)
        init_cfg=dict(checkpoint='https://huggingface.co/sail/dl/resolve/main/caformer/caformer_m36.pth')),
    neck=dict(in_channels=backbone_out_channels))
