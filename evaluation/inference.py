"""Network maps of whole images: resize, pad, batch, predict, flip and multi-scale averaging.

    prep = Preprocess.of_checkpoint(ckpt, model.cfg.input_multiple)   # eval.py, demo.py, validation
    batch = prep.batch(images, scale=1.0)                 # list of RGB uint8 [H, W, 3]
    maps = predict_maps(model, images, prep, skeleton, scales=(1.0,), flip=True, device="cuda")
    # maps.maps [B, C, h, w] float32 in the scale-1 frame; maps.sizes [B, 2] valid cells;
    # maps.scales [B, 2] (sx, sy) input pixels per original pixel (core.frame)

Frames (core/frame.py): at scale m an image is resized so its height is round(m * height)
pixels (its width in proportion: the original's inference rule), then padded on the right and
bottom to a multiple of the network's input multiple and to at least a square. Only images
whose padded frames are the same go through the network together, so an image's maps never
depend on its batch. Maps are stride 4 in that padded frame. The flip test flips the padded
batch, so flipping the maps back puts every cell exactly where it was; channels are swapped with
skeleton.channel_flip() (left/right keypoints and mirrored limbs). Maps of other scales are resampled into the scale-1 frame
(bicubic, as the original; cell centres aligned, core.frame conventions) and averaged.
"""
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from core.frame import frame_matrix, inference_scale, map_size, scaled_size
from pipelines.config import PipelineConfig


def normalization_of(ckpt: dict) -> tuple:
    """(mean, std, fill) RGB 0..255 the checkpoint was trained with (its pipeline config), else
    the pipeline's defaults (pipelines.config.PipelineConfig)."""
    pipe = (ckpt.get("config") or {}).get("pipeline") or {}
    default = PipelineConfig()
    return (tuple(pipe.get("mean", default.mean)), tuple(pipe.get("std", default.std)),
            float(pipe.get("fill", default.fill)))


@dataclass
class Batch:
    images: torch.Tensor   # [B, 3, Hp, Wp] uint8, padded with `fill`
    sizes: np.ndarray      # [B, 2] (height, width) of each resized image, input pixels
    scales: np.ndarray     # [B, 2] (sx, sy): input pixels per original pixel


@dataclass
class Preprocess:
    height: int                   # inference frame height at scale 1, pixels (checkpoint input_size)
    multiple: int                 # padded sides are multiples of this (stride x 2**depth)
    mean: tuple = PipelineConfig.mean
    std: tuple = PipelineConfig.std
    fill: int = 128               # padding value, as the training pipeline fills outside the image

    @classmethod
    def of_checkpoint(cls, ckpt: dict, multiple: int) -> "Preprocess":
        """The inference frame of a checkpoint (or of training's checkpoint fields while it runs):
        its training input size as the frame height, its pipeline's normalization and fill."""
        mean, std, fill = normalization_of(ckpt)
        return cls(int(ckpt["input_size"]), multiple, mean, std, round(fill))

    def padded_size(self, height: int, width: int, scale: float = 1.0) -> tuple:
        """(Hp, Wp): the padded frame of a height x width image at `scale`, on its own: sides
        rounded up to the multiple, and at least square (training inputs are S x S, a narrower
        frame padded on the right, so a portrait image gets the padding it was trained with)."""
        s = inference_scale(height, max(1, round(self.height * scale)))
        h, w = scaled_size(height, width, s)
        m = self.multiple
        Hp = -(-h // m) * m
        return Hp, -(-max(Hp, w) // m) * m

    def batch(self, images: list, scale: float = 1.0) -> Batch:
        """Resize RGB uint8 images [H, W, 3] to the frame of `scale` and pad them into one batch
        (to the largest padded frame among them)."""
        target = max(1, round(self.height * scale))
        resized, sizes, scales = [], [], []
        for im in images:
            H, W = im.shape[:2]
            s = inference_scale(H, target)
            h, w = scaled_size(H, W, s)
            # the frame's affine, bilinear, outside filled: what the training pipeline's warp
            # computes (DALI's CPU warp is OpenCV's), so the network sees the pixels it learned
            # from; a resize would shrink with other weights (INTER_AREA: ~6 grey levels off on
            # average at a 96-pixel frame) and scale x by the rounded w / W
            resized.append(cv2.warpAffine(im, np.asarray(frame_matrix(s)), (w, h), flags=cv2.INTER_LINEAR,
                                          borderMode=cv2.BORDER_CONSTANT, borderValue=(self.fill,) * 3))
            sizes.append((h, w))
            scales.append((s, s))
        padded = [self.padded_size(*im.shape[:2], scale) for im in images]
        Hp, Wp = max(p[0] for p in padded), max(p[1] for p in padded)
        out = np.full((len(images), Hp, Wp, 3), self.fill, np.uint8)
        for i, (im, (h, w)) in enumerate(zip(resized, sizes)):
            out[i, :h, :w] = im
        return Batch(torch.from_numpy(out).permute(0, 3, 1, 2), np.asarray(sizes), np.asarray(scales))

    def normalize(self, images: torch.Tensor, device) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> float32 (pixel - mean) / std on `device` (the copy moves uint8)."""
        x = images.to(device, non_blocking=True).float()
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return (x - mean) / std


@dataclass
class Maps:
    maps: torch.Tensor     # [B, C, h, w] float32 in the scale-1 frame
    sizes: np.ndarray      # [B, 2] valid map cells (height, width) of each image
    scales: np.ndarray     # [B, 2] (sx, sy) scale-1 input pixels per original pixel


@torch.no_grad()
def predict_maps(model, images: list, prep: Preprocess, skeleton, scales=(1.0,), flip=False,
                 device="cpu", stride: int = 4) -> Maps:
    """Averaged network maps of a list of RGB uint8 images (see the module docstring).

    Args:
        model: has predict(images [B, 3, H, W]) -> [B, C, H/stride, W/stride].
        images: list of RGB uint8 [H, W, 3] arrays.
        prep: Preprocess.
        skeleton: channel permutation of the flip test.
        scales: multipliers of prep.height; the first frame of scale 1.0 (or the first scale)
            is the frame of the result.
        flip: also predict the mirrored images and average.
        device: "cpu" or "cuda" (CUDA runs under bfloat16 autocast).
    """
    # an image's maps must not depend on the other images of the batch: padding it to a wider
    # batch-mate changes what the network sees (an overfit model scored AP 0.60 image by image
    # and 0.49 in batches of 8), so only images with the same padded frames share a forward pass
    keys = [tuple(prep.padded_size(*im.shape[:2], s) for s in scales) for im in images]
    groups = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    if len(groups) == 1:
        return _predict_one_frame(model, images, prep, skeleton, scales, flip, torch.device(device), stride)
    parts = [(idx, _predict_one_frame(model, [images[i] for i in idx], prep, skeleton, scales, flip,
                                      torch.device(device), stride)) for idx in groups.values()]
    h = max(p.maps.shape[-2] for _, p in parts)
    w = max(p.maps.shape[-1] for _, p in parts)
    first = parts[0][1].maps
    maps = first.new_zeros(len(images), first.shape[1], h, w)
    sizes, frame_scales = np.zeros((len(images), 2), np.int64), np.zeros((len(images), 2))
    for idx, p in parts:
        maps[idx, :, :p.maps.shape[-2], :p.maps.shape[-1]] = p.maps
        sizes[idx], frame_scales[idx] = p.sizes, p.scales
    return Maps(maps, sizes, frame_scales)


def _predict_one_frame(model, images, prep, skeleton, scales, flip, device, stride) -> Maps:
    """predict_maps for images whose padded frames are the same at every scale."""
    base_scale = 1.0 if 1.0 in scales else scales[0]
    base = prep.batch(images, base_scale)
    Hb, Wb = base.images.shape[-2:]
    total, count = None, 0
    for s in scales:
        batch = base if s == base_scale else prep.batch(images, s)
        x = prep.normalize(batch.images, device)
        for mirrored in ((False, True) if flip else (False,)):
            maps = _predict(model, x.flip(-1) if mirrored else x, device)
            if mirrored:
                maps = unflip(maps, skeleton)
            if s != base_scale:
                ratio = max(1, round(prep.height * s)) / max(1, round(prep.height * base_scale))
                maps = to_frame(maps, ratio, (Hb // stride, Wb // stride))
            total = maps if total is None else total + maps
            count += 1
    sizes = np.asarray([map_size(h, w, stride) for h, w in base.sizes])
    return Maps(total / count, sizes, base.scales)


def _predict(model, x, device) -> torch.Tensor:
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model.predict(x).float()
    return model.predict(x).float()


def unflip(maps: torch.Tensor, skeleton) -> torch.Tensor:
    """Maps [B, C, h, w] of mirrored images -> maps of the images themselves.

    Mirror the cells back and swap the channels of left/right keypoints and of mirrored limbs
    (skeleton.channel_flip(), an involution). Exact when the mirrored input was the whole padded
    input, whose width is a multiple of the stride.
    """
    return maps.flip(-1)[:, list(skeleton.channel_flip())]


def to_frame(maps: torch.Tensor, ratio: float, size: tuple) -> torch.Tensor:
    """Maps of a frame `ratio` times the base one -> the base frame's map size [B, C, *size].

    With align_corners=False and the scale factor given, output cell i samples input cell
    (i + 0.5) * ratio - 0.5: exactly the base cell's centre seen in the other frame (cell i is
    input pixel 4i + 1.5 in both). Bicubic, because bilinear resampling of coarse maps pulls
    peaks towards cell centres (ideal maps at scales 1, 0.75, 1.5: AP 0.970 bilinear, 0.977
    bicubic on the sample's val). The result is cropped, or zero-padded, to `size`.
    """
    out = F.interpolate(maps, scale_factor=1 / ratio, mode="bicubic", align_corners=False,
                        recompute_scale_factor=False)
    h, w = size
    out = out[..., :h, :w]
    return F.pad(out, (0, w - out.shape[-1], 0, h - out.shape[-2]))
