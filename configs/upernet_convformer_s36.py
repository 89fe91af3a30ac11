"""UperNet with a ConvFormer-S36 (depths 3-12-18-3) on ADE20K, 160k iterations.

The recipe of ``upernet_convformer_s18.py`` (its docstring says where each setting comes from).

Published result: ``benchmarks/published.py`` (MetaFormer Baselines, TPAMI 2024 / MambaOut Table 3).
ImageNet-1k weights: the official release below (or a local file, or timm ``convformer_s36``).
"""
_base_ = './upernet_convformer_s18.py'

model = dict(
    backbone=dict(
        arch='convformer_s36',
        # ImageNet drop path 0.3 (sail-sg/metaformer scripts/convformer/train_convformer_s36.sh)
        # -> 0.3 by the rule in upernet_convformer_s18.py (about the ImageNet value, >= 0.3).
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='https://huggingface.co/sail/dl/resolve/main/convformer/convformer_s36.pth')))
