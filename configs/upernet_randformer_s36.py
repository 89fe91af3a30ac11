"""UperNet with a RandFormer-S36 backbone on ADE20K, 160k iterations.

The MetaFormer Baselines (ConvFormer / CAFormer) recipe of ``upernet_convformer_s18.py`` (its
docstring says where each setting comes from), with the backbone swapped. No UperNet result
is published for RandFormer; its ImageNet numbers: ``benchmarks/published.py``,
METAFORMER_BASELINES_IMAGENET. The backbone: ``docs/metaformer_mixers.md``.
"""
_base_ = './upernet_convformer_s18.py'

model = dict(
    backbone=dict(
        arch='randformer_s36',
        # ImageNet drop path 0.2 (sail-sg/metaformer's train_randformer_s36.sh)
        # -> 0.3 by the rule in upernet_convformer_s18.py (about the ImageNet value, >= 0.3).
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='https://huggingface.co/sail/dl/resolve/main/randformer/randformer_s36.pth')))
