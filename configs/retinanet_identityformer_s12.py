# RetinaNet, IdentityFormer-S12 backbone, COCO 1x: the PoolFormer paper's RetinaNet recipe
# (retinanet_poolformer_s12.py, whose comments give each setting) with the backbone swapped.
# No dense results are published for IdentityFormer; its ImageNet numbers: benchmarks/published.py,
# METAFORMER_BASELINES_IMAGENET. The backbone: docs/metaformer_mixers.md.
_base_ = './retinanet_poolformer_s12.py'

model = dict(
    backbone=dict(
        arch='identityformer_s12',
        # ImageNet-1k weights of the MetaFormer Baselines release (fetched once and cached).
        init_cfg=dict(checkpoint='https://huggingface.co/sail/dl/resolve/main/identityformer/identityformer_s12.pth')))
