# RetinaNet, PoolFormer-S24 backbone, COCO 1x. Published results: benchmarks/published.py.
# Same recipe and widths as S12 (depths 4-4-12-4 instead of 2-2-6-2).
_base_ = './retinanet_poolformer_s12.py'

model = dict(
    backbone=dict(
        arch='poolformer_s24',
        init_cfg=dict(checkpoint='https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s24.pth.tar')))
