"""UperNet with a CAFormer-M36 (depths 3-12-18-3, widths 96-192-384-576) on ADE20K, 160k.

The recipe of ``upernet_convformer_s18.py`` (its docstring says where each setting comes from).

Published result: ``benchmarks/published.py`` (MetaFormer Baselines, TPAMI 2024 / MambaOut Table 3).
ImageNet-1k weights: the official release below (or a local file, or timm ``caformer_m36``).
"""
_base_ = './upernet_convformer_s18.py'

backbone_out_channels = [96, 192, 384, 576]  # M-size widths (S: 64-128-320-512)

model = dict(
    backbone=dict(
        arch='caformer_m36',
        # ImageNet drop path 0.4 (sail-sg/metaformer scripts/caformer/train_caformer_m36.sh)
        # -> 0.4 by the rule in upernet_convformer_s18.py (about the ImageNet value, >= 0.3).
        drop_path_rate=0.4,
        init_cfg=dict(checkpoint='https://huggingface.co/sail/dl/resolve/main/caformer/caformer_m36.pth')),
    decode_head=dict(in_channels=backbone_out_channels),
    auxiliary_head=dict(in_channels=backbone_out_channels[2]))
