"""Semantic FPN with a PoolFormer-M36 backbone on ADE20K; the S12 recipe with a wider, deeper backbone.

Published params and mIoU: ``benchmarks/published.py``. Set the ImageNet checkpoint path below.
"""
_base_ = ['./semantic_fpn_poolformer_s12.py']

model = dict(
    backbone=dict(
        arch='poolformer_m36',
        init_cfg=dict(type='Pretrained', checkpoint='https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_m36.pth.tar')),
    neck=dict(in_channels=[96, 192, 384, 768]))  # PoolFormer-M stage widths
