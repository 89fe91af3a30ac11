"""UperNet with a ConvFormer-S18 backbone on ADE20K, 160k iterations, 512x512 crops.

The recipe behind the only published dense numbers of ConvFormer / CAFormer (MetaFormer Baselines,
TPAMI 2024; repeated in MambaOut, arXiv 2405.07992, Table 3; the numbers themselves are in
``benchmarks/published.py``): UperNet in mmsegmentation, AdamW, lr 1e-4, batch 16, 160k
iterations. No segmentation code was released with either paper. MambaOut's author described the
setup in https://github.com/yuweihao/MambaOut/issues/251 : "based on Swin config", "add LN for
outputs of backbone at each stage", lr 1e-4 for all sizes, drop path 0.3 (Tiny), 0.3 or 0.4
(Small), 0.6 (Base), no layer-wise lr decay. So this config is mmseg's Swin-T UperNet config with
the backbone swapped and lr 1e-4; everything not overridden below is that config's:

* UPerHead (512 channels, pool scales 1-2-3-6) on all four stages, an auxiliary FCNHead on
  stage 3 (256 channels, loss weight 0.4), SyncBN in both heads;
* AdamW, betas (0.9, 0.999), weight decay 0.01, no decay on norm weights;
* linear warm-up over 1500 iterations from 1e-6 x lr, then poly decay (power 1.0) to 0 at 160k;
* 8 GPUs x 2 images = batch 16; resize (2048, 512) with ratio 0.5-2.0, 512x512 crops, flip,
  photometric distortion; single-scale test at (2048, 512), whole image.

ImageNet-1k weights: the official MetaFormer release (``init_cfg.checkpoint``, fetched once and
cached); a local file or a timm ``convformer_s18`` checkpoint works too. ``tools/test.py CONFIG
CKPT --tta`` runs the multi-scale + flip test ("MS" in the paper).
"""
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmseg_plugin'], allow_failed_imports=False)
# mmseg's visualizer, made to draw on any image layout (mmseg's browse_dataset.py needs it)
visualizer = dict(type='ContiguousSegLocalVisualizer')

# The one place the widths of the 64-128-320-512 MetaFormers are written (others override it).
backbone_out_channels = [64, 128, 320, 512]

model = dict(
    backbone=dict(
        _delete_=True,  # Swin's arguments are not MetaFormer arguments
        type='MetaFormer',
        arch='convformer_s18',
        out_indices=(0, 1, 2, 3),
        # Our output norm is GroupNorm(1, C) per stage (the PoolFormer papers' dense backbone),
        # where MambaOut's author describes a LayerNorm: the same 2C parameters per output,
        # normalising over (C, H, W) instead of over C at each position.
        # Drop path is not published for ConvFormer/CAFormer. MambaOut used 0.3 for its Tiny
        # (ImageNet drop path 0.2), 0.3-0.4 for Small (0.4) and 0.6 for Base (0.6), i.e. about
        # its ImageNet value and at least 0.3. The same rule here: ConvFormer-S18's ImageNet
        # drop path is 0.2 (sail-sg/metaformer scripts/convformer/train_convformer_s18.sh) -> 0.3
        # (the Swin-T base also has 0.3).
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/sail/dl/resolve/main/convformer/convformer_s18.pth')),
    decode_head=dict(in_channels=backbone_out_channels),  # base: Swin-T's 96-192-384-768
    auxiliary_head=dict(in_channels=backbone_out_channels[2]))  # stage 3 (index 2), as the base

# lr 1e-4 (the papers; Swin base: 6e-5). Weight decay 0.01 and betas are the base's. The base's
# `norm` key (decay_mult 0) also covers our output norms and the blocks' norm1/norm2; layer
# scales and StarReLU's scale/bias are per-channel gains like norm weights, so they get no weight
# decay either (as in timm's ImageNet training of these models; not stated for the UperNet runs).
optim_wrapper = dict(
    optimizer=dict(lr=1e-4),
    paramwise_cfg=dict(custom_keys={
        'layer_scale': dict(decay_mult=0.0),
        'res_scale': dict(decay_mult=0.0),
        'act': dict(decay_mult=0.0),  # StarReLU (mlp.act, token_mixer.act1): scale and bias
    }))
# lr 1e-4 belongs to batch 16 (the base's 2 images x 8 GPUs); on fewer GPUs set
# auto_scale_lr.enable=True (or tools/train.py --auto-scale-lr) to scale it linearly.
auto_scale_lr = dict(enable=False, base_batch_size=16)

# Multi-scale + flip test (tools/test.py --tta): the base's SegTTAModel (default_runtime) with
# mmseg 0.x's MultiScaleFlipAug semantics, which the published "MS" numbers used: each ratio
# scales the test scale (2048, 512), not the original image. (mmseg 1.x's ADE20K base resizes
# the original image by the ratio instead, `Resize(scale_factor=r)`, a different test.)
test_scale = (2048, 512)
tta_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(int(test_scale[0] * r), int(test_scale[1] * r)),
              keep_ratio=True) for r in tta_ratios],
        [dict(type='RandomFlip', prob=0.0, direction='horizontal'),
         dict(type='RandomFlip', prob=1.0, direction='horizontal')],
        [dict(type='LoadAnnotations')],
        [dict(type='PackSegInputs')],
    ]),
]
