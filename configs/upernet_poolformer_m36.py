"""UperNet with a PoolFormer-M36 backbone on ADE20K, 160k iterations.

The ConvFormer / CAFormer recipe of ``upernet_convformer_s18.py`` (its docstring says where
each setting comes from).

No published UperNet result for PoolFormer v1 (its paper used Semantic FPN:
``semantic_fpn_poolformer_m36.py``). ImageNet-1k weights: the official release below (or a
local file, timm or mmpretrain).
"""
_base_ = './upernet_convformer_s18.py'

backbone_out_channels = [96, 192, 384, 768]  # PoolFormer-M widths (S: 64-128-320-512)

model = dict(
    backbone=dict(
        arch='poolformer_m36',
        # ImageNet drop path 0.3 (PoolFormer paper) -> 0.3 by the rule in
        # upernet_convformer_s18.py (about the ImageNet value, at least 0.3).
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_m36.pth.tar')),
    decode_head=dict(in_channels=backbone_out_channels),
    auxiliary_head=dict(in_channels=backbone_out_channels[2]))
