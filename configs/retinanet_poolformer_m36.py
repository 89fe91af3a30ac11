# RetinaNet, PoolFormer-M36 backbone, COCO 1x (same recipe as S12; no published COCO result).
# M sizes are wider: stage widths 96-192-384-768, so the FPN input widths change with them.
_base_ = './retinanet_poolformer_s12.py'

backbone_out_channels = [192, 384, 768]  # stages 1-3 of 96-192-384-768

model = dict(
    backbone=dict(
        arch='poolformer_m36',
        init_cfg=dict(checkpoint='https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_m36.pth.tar')),
    neck=dict(in_channels=backbone_out_channels))
