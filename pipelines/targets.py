"""Target maps: keypoint heatmaps, limb maps and the two extra channels, at stride 4.

Coordinate frames: keypoints are in input pixels (x right, y down, pixel i's centre at i).
Map cell (i, j) of a stride-s map covers the input pixel centre (s*j + (s-1)/2, s*i + (s-1)/2),
so with s = 4 cell 0 sits at input 1.5 (the original's half-pixel convention).
`input_to_map` / `map_to_input` convert between the two; grouping uses the latter to decode.

Channel order comes from the skeleton (core.skeleton.Skeleton.channel_slices):
    limbs [L] | keypoints [K'] | person mask | maximum of the keypoint heatmaps

`render_targets` picks the implementation by device: the CuPy kernel on CUDA tensors
(pipelines/targets_cuda.py), the vectorized torch reference below on CPU. Both follow the
same definition; a parity test holds them together.
"""
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TargetConfig:
    stride: int = 4              # input pixels per map cell
    keypoint_sigma: float = 9.0  # Gaussian sigma of a keypoint heatmap, input pixels (original: 9 at 512)
    limb_sigma: float = 7.0      # Gaussian sigma of the distance to a limb segment, input pixels
    threshold: float = 0.015     # map values below this are set to 0 (gives each map its width)

    def limb_half_width(self) -> float:
        """Distance (input pixels) beyond which a limb map is exactly 0."""
        return self.limb_sigma * math.sqrt(2 * math.log(1 / self.threshold))


def map_to_input(coord, stride: int):
    """Map-cell coordinate -> input-pixel coordinate (works on floats, arrays, tensors)."""
    return coord * stride + (stride - 1) / 2


def input_to_map(coord, stride: int):
    """Input-pixel coordinate -> map-cell coordinate; inverse of map_to_input."""
    return (coord - (stride - 1) / 2) / stride


def render_targets(keypoints: torch.Tensor, masks: torch.Tensor, skeleton, cfg: TargetConfig) -> torch.Tensor:
    """Render the training targets of a batch.

    Args:
        keypoints: [B, P, K', 3] float32 (x, y, v) in input pixels, v = 0 for padding,
            unlabelled and out-of-frame keypoints.
        masks: [B, 2, H, W] float at map resolution; channel 1 is the person segmentation.
        skeleton: core.skeleton.Skeleton (limbs and channel order).
        cfg: TargetConfig.
    Returns:
        [B, C, H, W] float32 on the device of `keypoints`, C = skeleton.num_channels.
    """
    if keypoints.is_cuda:
        from pipelines.targets_cuda import render_targets_cuda
        return render_targets_cuda(keypoints, masks, skeleton, cfg)
    return render_targets_reference(keypoints, masks, skeleton, cfg)


def render_targets_reference(keypoints, masks, skeleton, cfg: TargetConfig):
    """Vectorized torch reference of `render_targets` (any device; what CI runs)."""
    B, P, K, _ = keypoints.shape
    H, W = masks.shape[-2:]
    dev = keypoints.device
    kp = keypoints.float()
    # input-pixel coordinates of the cell centres
    ys = map_to_input(torch.arange(H, device=dev, dtype=torch.float32), cfg.stride).view(1, 1, H, 1)
    xs = map_to_input(torch.arange(W, device=dev, dtype=torch.float32), cfg.stride).view(1, 1, 1, W)

    limbs = torch.tensor(skeleton.limbs, device=dev, dtype=torch.long).view(-1, 2)
    heat = torch.zeros(B, K, H, W, device=dev)
    paf = torch.zeros(B, len(limbs), H, W, device=dev)
    ks2 = 2 * cfg.keypoint_sigma ** 2
    ls2 = 2 * cfg.limb_sigma ** 2
    for p in range(P):  # people one at a time keeps memory at [B, K, H, W]; combine by max
        x = kp[:, p, :, 0].view(B, K, 1, 1)
        y = kp[:, p, :, 1].view(B, K, 1, 1)
        vis = (kp[:, p, :, 2] > 0).view(B, K, 1, 1)
        g = torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / ks2)
        heat = torch.maximum(heat, torch.where(vis & (g >= cfg.threshold), g, 0.0))

        if len(limbs):
            a = kp[:, p, limbs[:, 0]]  # [B, L, 3]
            b = kp[:, p, limbs[:, 1]]
            d2 = _segment_distance2(xs, ys, a[..., 0, None, None], a[..., 1, None, None],
                                    b[..., 0, None, None], b[..., 1, None, None])
            g = torch.exp(-d2 / ls2)
            ok = ((a[..., 2] > 0) & (b[..., 2] > 0)).view(B, -1, 1, 1)
            paf = torch.maximum(paf, torch.where(ok & (g >= cfg.threshold), g, 0.0))

    person = masks[:, 1:2].float()
    kmax = heat.amax(dim=1, keepdim=True) if K else torch.zeros_like(person)
    return torch.cat([paf, heat, person, kmax], dim=1)


def _segment_distance2(px, py, ax, ay, bx, by):
    """Squared distance from points (px, py) to segments a-b (broadcasting), input pixels."""
    dx, dy = bx - ax, by - ay
    len2 = dx * dx + dy * dy
    t = ((px - ax) * dx + (py - ay) * dy) / len2.clamp_min(1e-6)
    t = t.clamp(0, 1)
    cx, cy = ax + t * dx, ay + t * dy
    return (px - cx) ** 2 + (py - cy) ** 2
