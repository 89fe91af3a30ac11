"""``SegLocalVisualizer`` for images of any memory layout (the seg configs' visualizer).

mmseg 1.2.2's ``SegLocalVisualizer._draw_sem_seg`` draws the class labels with OpenCV onto
``np.zeros_like(image)``, which keeps the image's strides. mmseg's own
``tools/analysis_tools/browse_dataset.py`` passes a channel-reordered view of a CHW tensor, so the
mask is not C-contiguous and ``cv2.rectangle`` refuses it ("Layout of the output array img is
incompatible with cv::Mat", OpenCV 4 and 5 alike). Handing the drawing a C-contiguous copy is the
whole change; what is drawn is the same.
"""
import numpy as np
from mmseg.registry import VISUALIZERS
from mmseg.visualization import SegLocalVisualizer


@VISUALIZERS.register_module()
class ContiguousSegLocalVisualizer(SegLocalVisualizer):
    """mmseg's visualizer, drawing on a C-contiguous copy of a strided image."""

    def _draw_sem_seg(self, image: np.ndarray, *args, **kwargs) -> np.ndarray:
        return super()._draw_sem_seg(np.ascontiguousarray(image), *args, **kwargs)
