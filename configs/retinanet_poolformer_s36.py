# RetinaNet, PoolFormer-S36 backbone, COCO 1x. Published results: benchmarks/published.py.
# Same recipe and widths as S12 (depths 6-6-18-6).
_base_ = './retinanet_poolformer_s12.py'

model = dict(
    backbone=dict(
        arch='poolformer_s36',
        init_cfg=dict(checkpoint='https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s36.pth.tar')))
