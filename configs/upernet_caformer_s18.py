"""UperNet with a CAFormer-S18 on ADE20K, 160k iterations.

CAFormer: separable-convolution token mixers in stages 1-2, self-attention in stages 3-4.

The recipe of ``upernet_convformer_s18.py`` (its docstring says where each setting comes from).

Published result: ``benchmarks/published.py`` (MetaFormer Baselines, TPAMI 2024 / MambaOut Table 3).
ImageNet-1k weights: the official release below (or a local file, or timm ``caformer_s18``).
"""
_base_ = './upernet_convformer_s18.py'

model = dict(
    backbone=dict(
        arch='caformer_s18',
        # ImageNet drop path 0.15 (sail-sg/metaformer scripts/caformer/train_caformer_s18.sh)
        # -> 0.3 by the rule in upernet_convformer_s18.py (about the ImageNet value, >= 0.3).
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='https://huggingface.co/sail/dl/resolve/main/caformer/caformer_s18.pth')))
