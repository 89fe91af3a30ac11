"""Semantic FPN with a ConvFormer-S18 (separable-convolution token mixers in all four stages) on ADE20K.

The MetaFormer-baselines backbones in the PoolFormer segmentation recipe: same widths as
PoolFormer-S (64, 128, 320, 512), depths (3, 3, 9, 3). This project records no reference mIoU for
this pairing: it is a starting point, not a reproduction. Set the path to the ImageNet weights
(official or timm `convformer_s18`) below.
"""
_base_ = ['./semantic_fpn_poolformer_s12.py']

model = dict(
    backbone=dict(
        arch='convformer_s18',
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/sail/dl/resolve/main/convformer/convformer_s18.pth')))
