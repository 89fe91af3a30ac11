# Mask R-CNN, PoolFormer-S24 backbone, COCO 1x. Published results: benchmarks/published.py.
# Same recipe and widths as S12 (depths 4-4-12-4).
_base_ = './mask_rcnn_poolformer_s12.py'

model = dict(
    backbone=dict(
        arch='poolformer_s24',
        init_cfg=dict(checkpoint='https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s24.pth.tar')))
