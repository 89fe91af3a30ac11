"""Semantic FPN, RandFormer-S24 backbone, ADE20K: the PoolFormer paper's segmentation recipe.

``semantic_fpn_poolformer_s12.py`` (its docstring gives each setting) with the backbone swapped.
No dense results are published for RandFormer; ImageNet numbers: ``benchmarks/published.py``,
METAFORMER_BASELINES_IMAGENET. The backbone: ``docs/metaformer_mixers.md``.
"""
_base_ = ['./semantic_fpn_poolformer_s12.py']

model = dict(
    backbone=dict(
        arch='randformer_s24',
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/sail/dl/resolve/main/randformer/randformer_s24.pth')))
