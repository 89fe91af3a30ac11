# The demo UperNet-ConvFormer-S18 on data/tiny_ade20k with the test scale cut to (256, 64) (demo:
# (512, 128)) and the multi-scale + flip test to 3 ratios (demo: 6), so that
# tests/test_strong_recipes.py runs `tools/test.py --tta` (6 views of UperNet's 512-channel head)
# in seconds on a CPU. Same model: checkpoints of the demo config load into it.
_base_ = '../../configs/demo/upernet_convformer_s18_tiny.py'

test_scale = (256, 64)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=test_scale, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(int(test_scale[0] * r), int(test_scale[1] * r)),
              keep_ratio=True) for r in [0.5, 1.0, 1.5]],
        [dict(type='RandomFlip', prob=0.0, direction='horizontal'),
         dict(type='RandomFlip', prob=1.0, direction='horizontal')],
        [dict(type='LoadAnnotations')],
        [dict(type='PackSegInputs')],
    ]),
]
test_dataloader = dict(dataset=dict(indices=2, pipeline=test_pipeline))
