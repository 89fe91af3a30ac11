# RetinaNet, PoolFormer-M48 backbone, COCO 1x (same recipe as S12; no published COCO result).
# Same widths as M36 (depths 8-8-24-8).
_base_ = './retinanet_poolformer_m36.py'

model = dict(
    backbone=dict(
        arch='poolformer_m48',
        init_cfg=dict(checkpoint='https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_m48.pth.tar')))
