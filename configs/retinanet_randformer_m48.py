# RetinaNet, RandFormer-M48 backbone, COCO 1x: the PoolFormer paper's RetinaNet recipe
# (retinanet_poolformer_s12.py, whose comments give each setting) with the backbone swapped.
# No dense results are published for RandFormer; its ImageNet numbers: benchmarks/published.py,
# METAFORMER_BASELINES_IMAGENET. The backbone: docs/metaformer_mixers.md.
# M sizes are wider: stage widths 96-192-384-768, so the FPN input widths change with them.
_base_ = './retinanet_poolformer_s12.py'

backbone_out_channels = [192, 384, 768]  # stages 1-3 of 96-192-384-768

model = dict(
    backbone=dict(
        arch='randformer_m48',
        # ImageNet-1k weights of the MetaFormer Baselines release (fetched once and cached).
        init_cfg=dict(checkpoint='https://huggingface.co/sail/dl/resolve/main/randformer/randformer_m48.pth')),
    neck=dict(in_channels=backbone_out_channels))
