"""UperNet with an IdentityFormer-M48 backbone on ADE20K, 160k iterations.

The MetaFormer Baselines (ConvFormer / CAFormer) recipe of ``upernet_convformer_s18.py`` (its
docstring says where each setting comes from), with the backbone swapped. No UperNet result
is published for IdentityFormer; its ImageNet numbers: ``benchmarks/published.py``,
METAFORMER_BASELINES_IMAGENET. The backbone: ``docs/metaformer_mixers.md``.
"""
_base_ = './upernet_convformer_s18.py'

backbone_out_channels = [96, 192, 384, 768]  # M widths (S: 64-128-320-512)

model = dict(
    backbone=dict(
        arch='identityformer_m48',
        # ImageNet drop path 0.4 (sail-sg/metaformer's train_identityformer_m48.sh)
        # -> 0.4 by the rule in upernet_convformer_s18.py (about the ImageNet value, >= 0.3).
        drop_path_rate=0.4,
        init_cfg=dict(checkpoint='https://huggingface.co/sail/dl/resolve/main/identityformer/identityformer_m48.pth')),
    decode_head=dict(in_channels=backbone_out_channels),
    auxiliary_head=dict(in_channels=backbone_out_channels[2]))
