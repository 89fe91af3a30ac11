"""Published numbers this toolkit is compared against: plain data, one table per source.

Each table maps ``(method, backbone arch)`` to the parameter count in millions and the
accuracy in percent as the source prints them. Configs cite the source in a comment and do not
repeat the numbers; ``benchmarks/report`` and the tests read them from here.
"""

#: Where the POOLFORMER_* tables come from.
POOLFORMER_SOURCE = ('PoolFormer paper (Yu et al., "MetaFormer Is Actually What You Need for '
                     'Vision", CVPR 2022), Table 3 (COCO val2017, 1x) and Table 4 (ADE20K val, '
                     'Semantic FPN 40k iterations)')

#: COCO val2017, 1x schedule (PoolFormer paper, Table 3): box / mask AP.
POOLFORMER_COCO = {
    ('RetinaNet', 'poolformer_s12'): dict(params=21.7, bbox_mAP=36.2),
    ('RetinaNet', 'poolformer_s24'): dict(params=31.1, bbox_mAP=38.9),
    ('RetinaNet', 'poolformer_s36'): dict(params=40.6, bbox_mAP=39.5),
    ('Mask R-CNN', 'poolformer_s12'): dict(params=31.6, bbox_mAP=37.3, segm_mAP=34.6),
    ('Mask R-CNN', 'poolformer_s24'): dict(params=41.0, bbox_mAP=40.1, segm_mAP=37.0),
    ('Mask R-CNN', 'poolformer_s36'): dict(params=50.5, bbox_mAP=41.0, segm_mAP=37.7),
}

#: ADE20K val, single scale, Semantic FPN 40k iterations (PoolFormer paper, Table 4): mIoU.
POOLFORMER_ADE20K = {
    ('Semantic FPN', 'poolformer_s12'): dict(params=15.7, mIoU=37.2),
    ('Semantic FPN', 'poolformer_s24'): dict(params=25.1, mIoU=40.3),
    ('Semantic FPN', 'poolformer_s36'): dict(params=34.6, mIoU=42.0),
    ('Semantic FPN', 'poolformer_m36'): dict(params=59.8, mIoU=42.4),
    ('Semantic FPN', 'poolformer_m48'): dict(params=77.1, mIoU=42.7),
}
