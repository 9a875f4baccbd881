"""The inference frame: the image scaled so its height is a fixed number of pixels (512 for COCO).

Original image pixels <-> input pixels of the scaled image, pixel i's centre at coordinate i in
both (the convention of cv2.resize): x_input = (x + 0.5) * scale - 0.5. Used by eval.py, by
tools/gt_upper_bound.py (to render ideal maps where the network's would be) and by demo.py.
"""
import math


def inference_scale(height: int, target_height: int) -> float:
    """Factor that brings an image of `height` pixels to `target_height` (the original's rule)."""
    return target_height / height


def scaled_size(height: int, width: int, scale: float) -> tuple:
    """(height, width) in pixels of the image scaled by `scale` (at least 1 each)."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def map_size(height: int, width: int, stride: int) -> tuple:
    """(h, w) map cells covering an input of height x width pixels at `stride`."""
    return math.ceil(height / stride), math.ceil(width / stride)


def image_to_input(coord, scale: float):
    """Original-image coordinate -> coordinate in the image scaled by `scale` (arrays too)."""
    return (coord + 0.5) * scale - 0.5


def input_to_image(coord, scale: float):
    """Inverse of image_to_input."""
    return (coord + 0.5) / scale - 0.5
