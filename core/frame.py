"""The inference frame: the image scaled so its height is S pixels (512 for COCO), placed at the
left, the rest padded. One definition for eval.py, demo.py, validation during training and the
training pipeline's `frame` mode (pipelines/augment.py), so a network is evaluated in exactly
the frame it learned.

Original image pixels <-> input pixels of the scaled image, pixel i's centre at coordinate i in
both (the convention of cv2.resize and of DALI's warps with pixel_origin="center"):
x_input = (x + 0.5) * scale - 0.5. The network is fully convolutional: inference pads the
scaled image on the right and bottom (evaluation/inference.py); training, whose batches are
S x S, takes an S-wide window of it (`window_centre`).

The functions are plain arithmetic, so they take floats, numpy arrays and DALI graph nodes alike.
"""
import math


def inference_scale(height, target_height):
    """Factor that brings an image of `height` pixels to `target_height` (the original's rule)."""
    return target_height / height


def scaled_size(height: int, width: int, scale: float) -> tuple:
    """(height, width) in pixels of the image scaled by `scale` (at least 1 each)."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def map_size(height: int, width: int, stride: int) -> tuple:
    """(h, w) map cells covering an input of height x width pixels at `stride`."""
    return math.ceil(height / stride), math.ceil(width / stride)


def image_to_input(coord, scale):
    """Original-image coordinate -> coordinate in the image scaled by `scale` (arrays too)."""
    return (coord + 0.5) * scale - 0.5


def input_to_image(coord, scale):
    """Inverse of image_to_input."""
    return (coord + 0.5) / scale - 0.5


def frame_matrix(scale) -> list:
    """[2, 3] affine original -> input pixels of the frame: image_to_input on both axes, the
    same `scale` for x and y (cv2.warpAffine's form)."""
    shift = 0.5 * scale - 0.5
    return [[scale, 0.0, shift], [0.0, scale, shift]]


def window_centre(scale, size: int, offset_x=0.0):
    """(x, y) original pixel at the centre of the size x size window of the frame whose left edge
    is `offset_x` input pixels right of the frame's left edge (top edge: the frame's).

    An affine that maps this point to input pixel ((size - 1) / 2, (size - 1) / 2) with `scale`
    and no rotation is exactly the frame, shifted left by offset_x.
    """
    middle = (size - 1) / 2
    return input_to_image(middle + offset_x, scale), input_to_image(middle, scale)
