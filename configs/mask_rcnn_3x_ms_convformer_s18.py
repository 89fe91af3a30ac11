# Mask R-CNN with a ConvFormer-S18 backbone on COCO, 3x schedule with multi-scale training: the
# ConvNeXt model zoo's recipe (mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco
# .py, from the ConvNeXt paper's official detection configs), which this config inherits.
# No COCO result has been published for ConvFormer / CAFormer; this is the setting users compare
# backbones in (ConvNeXt / Swin zoos), not a reproduction.
#
# Unchanged from the base: 36 epochs, LR steps after epochs 27 and 33, linear warm-up over 1000
# iterations from 0.001 x lr; DETR-style multi-scale training (short side 480-800, or a
# 400-600 resize + 384-600 crop + 480-800 resize); 2 images per GPU on 8 GPUs (batch 16;
# `tools/train.py --auto-scale-lr` scales lr from `auto_scale_lr.base_batch_size=16`);
# AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05; layer-wise lr decay 0.95.
# ConvFormer-S18 has ConvNeXt-T's depths (3-3-9-3), so its 6 decay layers group the same blocks
# as the base's num_layers=6.
_base_ = [
    'mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py',
    './_base_/tta_instance_coco.py',
]
custom_imports = dict(imports=['mmdet_plugin'], allow_failed_imports=False)  # base: mmpretrain

# The one place the widths of the 64-128-320-512 MetaFormers are written (others override it).
backbone_out_channels = [64, 128, 320, 512]

model = dict(
    backbone=dict(
        _delete_=True,  # the base's mmpretrain ConvNeXt arguments
        type='MetaFormer',
        arch='convformer_s18',
        out_indices=(0, 1, 2, 3),
        # Drop path: the ConvNeXt zoo's value for its size class. ConvNeXt-T (28 M backbone)
        # uses 0.4 (this base), ConvNeXt-S (50 M) 0.6 (cascade-mask-rcnn_convnext-s-...-3x).
        # Backbones under 35 M parameters (PoolFormer S12-S36, ConvFormer/CAFormer-S18) take
        # 0.4, larger ones 0.6. Not tuned for MetaFormers.
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/sail/dl/resolve/main/convformer/convformer_s18.pth')),
    neck=dict(in_channels=backbone_out_channels))  # base: ConvNeXt-T's 96-192-384-768

# fp32 by default (base: AmpOptimWrapper, CUDA-only; fp16 AMP has gone NaN with PoolFormer
# backbones, see README): `tools/train.py --amp` switches to mixed precision.
# The base's layer-wise decay (rate 0.95) with mmdet's ConvNeXt-only constructor is replaced by
# the same rule over MetaFormer layer names (metaformer_dense/layer_decay.py); the number of
# decay layers is derived from the backbone's depths.
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='MetaFormerLayerDecayConstructor',
    paramwise_cfg=dict(_delete_=True, decay_rate=0.95, decay_type='layer_wise'))
