"""Semantic FPN, IdentityFormer-M48 backbone, ADE20K: the PoolFormer paper's segmentation recipe.

``semantic_fpn_poolformer_s12.py`` (its docstring gives each setting) with the backbone swapped.
No dense results are published for IdentityFormer; ImageNet numbers: ``benchmarks/published.py``,
METAFORMER_BASELINES_IMAGENET. The backbone: ``docs/metaformer_mixers.md``.
"""
_base_ = ['./semantic_fpn_poolformer_s12.py']

model = dict(
    backbone=dict(
        arch='identityformer_m48',
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/sail/dl/resolve/main/identityformer/identityformer_m48.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))  # M stage widths
