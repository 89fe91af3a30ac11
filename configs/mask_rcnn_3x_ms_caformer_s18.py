# Mask R-CNN 3x (multi-scale training) with a CAFormer-S18 backbone on COCO:
# the ConvNeXt-zoo recipe of mask_rcnn_3x_ms_convformer_s18.py
# (which says where each setting comes from).
_base_ = './mask_rcnn_3x_ms_convformer_s18.py'

model = dict(
    backbone=dict(
        arch='caformer_s18',
        # drop path 0.4 (inherited): 26 M backbone, the ConvNeXt-T class (< 35 M)
        init_cfg=dict(checkpoint='https://huggingface.co/sail/dl/resolve/main/caformer/caformer_s18.pth')))
