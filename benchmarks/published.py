"""Published dense-prediction numbers that this toolkit's configs are compared with.

One source for every published number: configs cite the paper in a comment, tests and
``tools/analysis/benchmark_report.py`` import the tables from here. Plain data, no imports.

UperNet on ADE20K (the only dense numbers published for ConvFormer and CAFormer): "MetaFormer
Baselines for Vision" (Yu et al., TPAMI 2024), repeated in "MambaOut: Do We Really Need Mamba for
Vision?" (Yu & Wang, arXiv 2405.07992, Table 3). Params in millions of the whole segmentor; MACs
(multiply-adds, the papers' "MACs", what ``mmengine.analysis.get_model_complexity_info`` counts)
in G at a 512x2048 input; mIoU on ADE20K val, single-scale and multi-scale + flip ("MS").
"""

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
