"""DALI graph pieces of the augmentation: one random affine per sample, and a colour tint.

Every function here takes and returns DALI graph nodes (data of one sample each, CPU), so the
same code builds the CPU and the GPU pipeline (pipelines/pipeline.py). Frames:
    original pixels   the stored image; pixel i's centre at i (the keypoints' frame)
    input pixels      the network input, S x S; pixel i's centre at i
    map cells         the targets, S / stride a side; cell j's centre is input pixel stride * j + (stride - 1) / 2
The affine M maps original -> input pixels:
    M = T((S - 1) / 2) . R(angle) . Scale(s * (-1 if flip else 1), s) . T(-(centre + shift))
with the centre on a random main person, the image centre or a window of the inference frame
(core/frame.py), and s its normalized scale times a random scale (AugmentConfig).
"""
import numpy as np
from nvidia.dali import fn, types
import nvidia.dali.math as dmath

from core.frame import inference_scale, window_centre

_FAR = 1e7  # stands for +-infinity in box reductions over unlabelled keypoints (finite: 0 * _FAR = 0)


def coin(probability: float):
    """A per-sample random scalar: 1.0 with `probability`, else 0.0."""
    return fn.cast(fn.random.coin_flip(probability=probability), dtype=types.FLOAT)


def uniform(low: float, high: float, shape=None):
    """A per-sample random value (or [shape] tensor), uniform in [low, high); a constant if low == high
    (DALI refuses empty ranges, and a switched-off augmentation should draw nothing)."""
    if low == high:
        return low if shape is None else types.Constant(np.full(shape, low, np.float32))
    if shape is None:
        return fn.random.uniform(range=[low, high])
    return fn.random.uniform(range=[low, high], shape=shape)


def person_boxes(kp):
    """Boxes of the labelled keypoints of each person.

    Args:
        kp: [P, K, 3] (x, y, v) original pixels.
    Returns:
        (cx, cy, size, count), each [P]: box centre, max(box width, box height), labelled keypoints.
        A person with no labelled keypoint has count 0 (its other values are meaningless).
    """
    x, y = kp[:, :, 0], kp[:, :, 1]
    lab = fn.cast(kp[:, :, 2] > 0, dtype=types.FLOAT)
    far = (1.0 - lab) * _FAR
    x0, x1 = fn.reductions.min(x * lab + far, axes=1), fn.reductions.max(x * lab - far, axes=1)
    y0, y1 = fn.reductions.min(y * lab + far, axes=1), fn.reductions.max(y * lab - far, axes=1)
    count = fn.reductions.sum(lab, axes=1)
    return (x0 + x1) * 0.5, (y0 + y1) * 0.5, dmath.max(x1 - x0, y1 - y0), count


def choose_main_person(kp, min_keypoints: int):
    """Pick one person with at least `min_keypoints` labelled keypoints, uniformly at random.

    Args:
        kp: [P, K, 3] original pixels, P >= 0.
    Returns:
        (found, cx, cy, size) scalars (float): found = 1 if such a person exists, else 0 and the
        others 0; centre and size of the chosen person's keypoint box.
    """
    cx, cy, size, count = person_boxes(kp)
    eligible = fn.cast(count >= float(min_keypoints), dtype=types.FLOAT)
    score = eligible * fn.random.uniform(count, range=[1.0, 2.0])  # eligible people in [1, 2), others 0
    best = fn.reductions.max(score)
    pick = fn.cast(score == best, dtype=types.FLOAT) * eligible     # one-hot (ties: averaged below)
    found = fn.cast(best > 0.0, dtype=types.FLOAT)
    n = dmath.max(fn.reductions.sum(pick), 1.0)
    return (found, fn.reductions.sum(pick * cx) / n, fn.reductions.sum(pick * cy) / n,
            fn.reductions.sum(pick * size) / n)


def with_dummy_person(kp, num_keypoints: int):
    """[P, K, 3] -> [P + 1, K, 3] with an unlabelled row, so reductions over people never see P = 0."""
    return fn.cat(kp, types.Constant(np.zeros((1, num_keypoints, 3), np.float32)), axis=0)


def sample_affine(kp, image_shape, aug, input_size: int, num_keypoints: int, train: bool):
    """Draw one affine per sample.

    Args:
        kp: [P, K, 3] keypoints, original pixels.
        image_shape: [3] (H, W, C) of the original image (fn.peek_image_shape).
        aug: AugmentConfig; ignored when not `train`: then no augmentation, and the input is the
            left S x S window of the inference frame (core/frame.py), as eval.py sees the image.
        input_size: S.
        num_keypoints: K, keypoints per person in the data.
    Returns:
        (centre [2], scale, angle, flip): the affine's parameters, scalar graph nodes or plain
        floats (flip is always a node, 1.0 or 0.0); `affine_matrices` turns them into matrices.
    """
    S = float(input_size)
    height = fn.cast(image_shape[0], dtype=types.FLOAT)
    width = fn.cast(image_shape[1], dtype=types.FLOAT)
    fit = S / dmath.max(width, height)                       # whole image inside the input
    mid_x, mid_y = (width - 1.0) * 0.5, (height - 1.0) * 0.5
    if not train:  # flip stays a graph node (always 0) because the pipeline outputs it
        scale = inference_scale(height, S)
        return fn.stack(*window_centre(scale, input_size)), scale, 0.0, coin(0.0)

    if aug.center == "frame":
        # eval.py's frame (height S); a frame wider than S is cropped at a random offset, one
        # narrower is padded on the right as eval.py pads it
        scale = inference_scale(height, S)
        spare = dmath.max(width * scale - S, 0.0)
        cx, cy = window_centre(scale, input_size, fn.random.uniform(range=[0.0, 1.0]) * spare)
    elif aug.center == "person":
        found, px, py, size = choose_main_person(with_dummy_person(kp, num_keypoints), aug.main_min_keypoints)
        person_scale = dmath.min(aug.target_dist * S / dmath.max(size, 1.0), aug.max_upscale)
        scale = found * person_scale + (1.0 - found) * fit
        cx, cy = found * px + (1.0 - found) * mid_x, found * py + (1.0 - found) * mid_y
    elif aug.center == "random":
        scale = S / dmath.min(width, height)                  # the crop covers the shorter side
        cx = fn.random.uniform(range=[0.0, 1.0]) * (width - 1.0)
        cy = fn.random.uniform(range=[0.0, 1.0]) * (height - 1.0)
    else:  # "image"
        scale, cx, cy = fit, mid_x, mid_y

    rescale = coin(aug.scale_prob)
    scale = scale * (rescale * uniform(aug.scale_min, aug.scale_max) + (1.0 - rescale))
    shift = uniform(-aug.max_shift, aug.max_shift, shape=[2])
    centre = fn.stack(cx, cy) + shift
    angle = uniform(-aug.max_rotation, aug.max_rotation)
    flip = coin(aug.flip_prob)
    return centre, scale, angle, flip


def affine_matrices(centre, scale, angle, flip, input_size: int, stride: int):
    """The affine in the three forms the pipeline needs.

    Returns:
        keypoints: [2, 3] original -> input pixels (for fn.coord_transform)
        image: [3, 3] the same map, homogeneous (for fn.experimental.warp_perspective with
            inverse_map=False and pixel_origin="center": pixel centres at integers, as here)
        mask: [3, 3] original pixels -> map cells: cell j's centre is input pixel
            stride * j + (stride - 1) / 2 (the targets' convention), so j = (u - (stride - 1) / 2) / stride
    """
    S = float(input_size)
    m = fn.transforms.translation(offset=-centre)
    m = fn.transforms.scale(m, scale=fn.stack(scale * (1.0 - 2.0 * flip), scale))
    m = fn.transforms.rotation(m, angle=angle)
    m = fn.transforms.translation(m, offset=[(S - 1) / 2] * 2)
    to_map = fn.transforms.scale(m, scale=[1.0 / stride] * 2)
    to_map = fn.transforms.translation(to_map, offset=[-(stride - 1) / 2 / stride] * 2)
    return m, homogeneous(m), homogeneous(to_map)


def homogeneous(matrix):
    """[2, 3] affine -> [3, 3] with the row (0, 0, 1)."""
    return fn.cat(matrix, types.Constant(np.array([[0.0, 0.0, 1.0]], np.float32)), axis=0)


def tinted_normalization(mean, std, aug, train: bool):
    """Per-sample (mean, std) [3] for crop_mirror_normalize that also apply the colour tint.

    The tint multiplies each channel by a gain g in [1 - t, 1 + t] (with probability tint_prob);
    (g * x - mean) / std = (x - mean / g) / (std / g), so it costs nothing beyond the normalization.
    """
    mean_c = types.Constant(np.asarray(mean, np.float32))
    std_c = types.Constant(np.asarray(std, np.float32))
    if not train or aug.tint_prob == 0 or aug.tint_strength == 0:
        return mean_c, std_c
    tinted = coin(aug.tint_prob)
    gain = 1.0 + tinted * uniform(-aug.tint_strength, aug.tint_strength, shape=[3])
    return mean_c / gain, std_c / gain


def transform_keypoints(kp, matrix, num_keypoints: int):
    """[P, K, 3] original pixels -> [P, K, 3] input pixels (v unchanged; no flip swap yet)."""
    xy = fn.coord_transform(fn.reshape(kp[:, :, 0:2], shape=[-1, 2]), MT=matrix)
    return fn.cat(fn.reshape(xy, shape=[-1, num_keypoints, 2]), kp[:, :, 2:3], axis=2)
