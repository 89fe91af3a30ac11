"""UperNet with a PoolFormer-S12 backbone on ADE20K, 160k iterations.

The ConvFormer / CAFormer recipe of ``upernet_convformer_s18.py`` (its docstring says where
each setting comes from).

No published UperNet result for PoolFormer v1 (its paper used Semantic FPN:
``semantic_fpn_poolformer_s12.py``). ImageNet-1k weights: the official release below (or a
local file, timm or mmpretrain).
"""
_base_ = './upernet_convformer_s18.py'

model = dict(
    backbone=dict(
        arch='poolformer_s12',
        # ImageNet drop path 0.1 (PoolFormer paper) -> 0.3 by the rule in
        # upernet_convformer_s18.py (about the ImageNet value, at least 0.3).
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s12.pth.tar')))
