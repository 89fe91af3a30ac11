# Mask R-CNN, RandFormer-S24 backbone, COCO 1x: the PoolFormer paper's Mask R-CNN recipe
# (mask_rcnn_poolformer_s12.py, whose comments give each setting) with the backbone swapped.
# No dense results are published for RandFormer; its ImageNet numbers: benchmarks/published.py,
# METAFORMER_BASELINES_IMAGENET. The backbone: docs/metaformer_mixers.md.
_base_ = './mask_rcnn_poolformer_s12.py'

model = dict(
    backbone=dict(
        arch='randformer_s24',
        # ImageNet-1k weights of the MetaFormer Baselines release (fetched once and cached).
        init_cfg=dict(checkpoint='https://huggingface.co/sail/dl/resolve/main/randformer/randformer_s24.pth')))
