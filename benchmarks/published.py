"""Published numbers this toolkit is compared against: plain data, one table per source.

Configs cite the source in a comment and do not repeat the numbers; ``benchmarks/report`` and the
tests read them from here.

* ``POOLFORMER_*``: the PoolFormer paper's detection and segmentation results. Each table maps
  ``(method, backbone arch)`` to the parameter count in millions and the accuracy in percent.
* ``METAFORMER_BASELINES_IMAGENET``: ImageNet-1k results of IdentityFormer and RandFormer, the
  paper's two baselines, which have no published dense-prediction numbers ("MetaFormer Baselines
  for Vision", Yu et al., TPAMI 2024). Params in millions with the classifier (RandFormer's frozen
  mixing matrices listed apart, as the paper writes "+0.2" etc.), MACs in G at 224x224, top-1 %.
* ``UPERNET_ADE20K*``: UperNet on ADE20K, the only dense numbers published for ConvFormer and
  CAFormer: "MetaFormer Baselines for Vision" (Yu et al., TPAMI 2024), repeated in "MambaOut: Do
  We Really Need Mamba for Vision?" (Yu & Wang, arXiv 2405.07992, Table 3). Params in millions of
  the whole segmentor; MACs (multiply-adds, the papers' "MACs", what
  ``mmengine.analysis.get_model_complexity_info`` counts) in G at a 512x2048 input; mIoU on
  ADE20K val, single-scale and multi-scale + flip ("MS").
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

#: Where the UperNet numbers come from, for tables and plots.
UPERNET_ADE20K_SOURCE = (
    'MetaFormer Baselines for Vision (Yu et al., TPAMI 2024), repeated in MambaOut '
    '(arXiv 2405.07992) Table 3: UperNet, ADE20K val, 160k iterations, 512x512 crops, '
    'AdamW lr 1e-4, batch 16, mmsegmentation')
#: (H, W) of the input the published MACs were counted at.
UPERNET_ADE20K_MACS_INPUT = (512, 2048)

#: timm arch -> the published UperNet result; ``configs/upernet_<arch>.py`` builds the model.
UPERNET_ADE20K = {
    'convformer_s18': dict(params_m=54, macs_g=925, miou_ss=47.5, miou_ms=48.6),
    'caformer_s18': dict(params_m=54, macs_g=1024, miou_ss=48.1, miou_ms=48.9),
    'convformer_s36': dict(params_m=67, macs_g=1003, miou_ss=49.6, miou_ms=50.7),
    'caformer_s36': dict(params_m=67, macs_g=1197, miou_ss=50.6, miou_ms=50.8),
    'convformer_m36': dict(params_m=85, macs_g=1113, miou_ss=50.4, miou_ms=51.3),
    'caformer_m36': dict(params_m=84, macs_g=1346, miou_ss=51.7, miou_ms=51.7),
}

#: Other backbones in the same published table (no config here; context for plots).
UPERNET_ADE20K_REFERENCE = {
    'ConvNeXt-T': dict(params_m=60, miou_ss=46.0, miou_ms=46.7),
    'Swin-T': dict(params_m=60, miou_ss=44.4, miou_ms=45.8),
}

#: Where METAFORMER_BASELINES_IMAGENET comes from.
METAFORMER_BASELINES_IMAGENET_SOURCE = (
    'MetaFormer Baselines for Vision (Yu et al., TPAMI 2024), ImageNet-1k at 224x224; weights '
    'https://huggingface.co/sail/dl/resolve/main/{identityformer,randformer}/<arch>.pth')

#: arch -> params_m (with the classifier), mixing_matrix_params_m (RandFormer's frozen matrices,
#: on top of params_m), macs_g at 224x224 and ImageNet-1k top-1.
METAFORMER_BASELINES_IMAGENET = {
    'identityformer_s12': dict(params_m=11.9, mixing_matrix_params_m=0.0, macs_g=1.8, top1=74.6),
    'identityformer_s24': dict(params_m=21.3, mixing_matrix_params_m=0.0, macs_g=3.4, top1=78.2),
    'identityformer_s36': dict(params_m=30.8, mixing_matrix_params_m=0.0, macs_g=5.0, top1=79.3),
    'identityformer_m36': dict(params_m=56.1, mixing_matrix_params_m=0.0, macs_g=8.8, top1=80.0),
    'identityformer_m48': dict(params_m=73.3, mixing_matrix_params_m=0.0, macs_g=11.5, top1=80.4),
    'randformer_s12': dict(params_m=11.9, mixing_matrix_params_m=0.2, macs_g=1.9, top1=76.6),
    'randformer_s24': dict(params_m=21.3, mixing_matrix_params_m=0.5, macs_g=3.5, top1=78.2),
    'randformer_s36': dict(params_m=30.8, mixing_matrix_params_m=0.7, macs_g=5.2, top1=79.5),
    'randformer_m36': dict(params_m=56.1, mixing_matrix_params_m=0.7, macs_g=9.0, top1=81.2),
    'randformer_m48': dict(params_m=73.3, mixing_matrix_params_m=0.9, macs_g=11.9, top1=81.4),
}
