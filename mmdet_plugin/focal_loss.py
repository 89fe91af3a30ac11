"""mmdet's FocalLoss, usable under bfloat16 autocast on CUDA.

mmdet computes the sigmoid focal loss of CUDA tensors with mmcv's kernel, and mmcv 2.1 has that
kernel for float32 and float16 only: bf16 mixed-precision RetinaNet training stops with
``"sigmoid_focal_loss_forward_cuda_kernel" not implemented for 'BFloat16'``. Casting the logits
to float32 at the loss (where mixed-precision recipes keep losses anyway) removes the failure.
"""
from mmdet.models.losses import FocalLoss
from mmdet.registry import MODELS


@MODELS.register_module()
class FocalLossFP32(FocalLoss):
    """``FocalLoss`` that computes in float32 whatever precision the logits arrive in."""

    def forward(self, pred, target, *args, **kwargs):
        return super().forward(pred.float(), target, *args, **kwargs)
