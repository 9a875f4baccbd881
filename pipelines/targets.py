"""Target maps: keypoint heatmaps, limb maps and the two extra channels, at stride 4.

Coordinate frames: keypoints are in input pixels (x right, y down, pixel i's centre at i).
Map cell (i, j) of a stride-s map covers the input pixel centre (s*j + (s-1)/2, s*i + (s-1)/2),
so with s = 4 cell 0 sits at input 1.5 (the original's half-pixel convention).
`input_to_map` / `map_to_input` convert between the two; grouping uses the latter to decode.

Channel order comes from the skeleton (core.skeleton.Skeleton.channel_slices):
    limbs [L] | keypoints [K'] | person mask | maximum of the keypoint heatmaps

The definition, for a map cell whose centre is the input point q (all distances in input pixels):
    keypoint k:  max over people with k labelled of  exp(-|q - p_k|^2 / (2 sk^2)),
                 kept where |q - p_k| <= r_k = sk * sqrt(2 ln(1/threshold)), else 0
    limb (a, b): max over people with a and b labelled of  exp(-d^2 / (2 sl^2)), d = distance from
                 q to the SEGMENT a-b, kept where d <= r_l (same formula with sl), else 0
    person mask: the mask's person channel, eroded by `person_mask_erode` cells (the original erodes
                 its person mask with a 3x3 kernel at map resolution)
    keypoint max: max over the keypoint channels.
Values below the threshold are 0, so every map is exactly 0 beyond its radius; the comparisons
are made on squared distances, identically in both implementations.

`render_targets` picks the implementation by device: the CuPy kernel on CUDA tensors
(pipelines/targets_cuda.py), the windowed torch reference below on CPU. A parity test holds
them together. `TargetConfig.backend: torch` runs the reference on CUDA tensors too: the
fallback where CuPy or NVRTC is missing or suspect (pipelines/target_check.py finds that out).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_TILE = 8  # limb windows are covered by TILE x TILE blocks of map cells (bounded work per block)
BACKENDS = ("cupy", "torch")  # what renders on CUDA tensors; CPU tensors always take the reference


@dataclass(frozen=True)
class TargetConfig:
    stride: int = 4              # input pixels per map cell
    keypoint_sigma: float = 9.0  # Gaussian sigma of a keypoint heatmap, input pixels (original: 9 at 512)
    limb_sigma: float = 7.0      # Gaussian sigma of the distance to a limb segment, input pixels
    threshold: float = 0.015     # map values below this are set to 0 (gives each map its width)
    person_mask_erode: int = 1   # map cells eroded off the person-mask channel (original: 3x3 erosion)
    backend: str = "cupy"        # on CUDA: the CuPy kernel, or "torch" (the reference, slower)

    def __post_init__(self):
        if self.stride < 1 or self.keypoint_sigma <= 0 or self.limb_sigma <= 0:
            raise ValueError("stride, keypoint_sigma and limb_sigma must be positive")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.person_mask_erode < 0:
            raise ValueError(f"person_mask_erode must be >= 0, got {self.person_mask_erode}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")

    def keypoint_radius(self) -> float:
        """Distance (input pixels) beyond which a keypoint heatmap is exactly 0."""
        return self.keypoint_sigma * math.sqrt(2 * math.log(1 / self.threshold))

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
    if keypoints.is_cuda and cfg.backend == "cupy":
        from pipelines.targets_cuda import render_targets_cuda
        return render_targets_cuda(keypoints, masks, skeleton, cfg)
    return render_targets_reference(keypoints, masks, skeleton, cfg)


def render_targets_reference(keypoints, masks, skeleton, cfg: TargetConfig):
    """Torch reference of `render_targets` (any device; what CI runs).

    Only the cells near each labelled keypoint and limb are computed: a fixed window around a
    keypoint, TILE x TILE blocks covering a limb's box; values are combined by scatter-max.
    """
    B, P, K, _ = keypoints.shape
    H, W = masks.shape[-2:]
    C = skeleton.num_channels
    if K != skeleton.num_keypoints:
        raise ValueError(f"keypoints have {K} per person, the skeleton {skeleton.num_keypoints} "
                         f"(derived ones included)")
    out = torch.zeros(B, C, H, W, device=keypoints.device, dtype=torch.float32)
    kp = keypoints.detach().float()
    sl = skeleton.channel_slices()
    _splat_keypoints(out, kp, sl["keypoints"].start, sl["keypoint_max"], cfg)
    _splat_limbs(out, kp, skeleton.limbs, sl["limbs"].start, cfg)
    fill_extra_channels(out, masks, skeleton, cfg)
    return out


def fill_extra_channels(out, masks, skeleton, cfg: TargetConfig):
    """Write the person-mask channel of `out` [B, C, H, W] in place (keypoint max is splatted)."""
    person = masks[:, 1].to(out.dtype)
    e = cfg.person_mask_erode
    if e:  # min over a (2e+1)^2 window, separably; cells outside the map do not erode
        person = _min_filter(_min_filter(person, e, dim=2), e, dim=1)
    out[:, skeleton.channel_slices()["person_mask"]] = person


def _min_filter(x, e: int, dim: int):
    """Minimum over a window of 2e + 1 along `dim` of x [B, H, W]; the border is padded with +inf."""
    n = x.shape[dim]
    pad = [0, 0, 0, 0]
    pad[2 * (2 - dim)] = pad[2 * (2 - dim) + 1] = e
    padded = F.pad(x, pad, value=float("inf"))
    result = x.clone()
    for s in range(2 * e + 1):
        result = torch.minimum(result, padded.narrow(dim, s, n))
    return result


def _splat_keypoints(out, kp, channel0: int, max_channel: int, cfg: TargetConfig):
    """Max-combine each labelled keypoint's Gaussian into out[:, channel0 + k] and into
    out[:, max_channel] (the keypoint-max channel), in place."""
    B, C, H, W = out.shape
    b, p, k = (kp[..., 2] > 0).nonzero(as_tuple=True)
    if not len(b):
        return
    x, y = kp[b, p, k, 0], kp[b, p, k, 1]
    r2 = cfg.keypoint_radius() ** 2
    reach = math.ceil(cfg.keypoint_radius() / cfg.stride) + 1  # cells either side of the nearest one
    off = torch.arange(-reach, reach + 1, device=out.device)
    ix = torch.round(input_to_map(x, cfg.stride)).long()[:, None, None] + off[None, None, :]  # [N, 1, w]
    iy = torch.round(input_to_map(y, cfg.stride)).long()[:, None, None] + off[None, :, None]  # [N, w, 1]
    dx = map_to_input(ix.float(), cfg.stride) - x[:, None, None]
    dy = map_to_input(iy.float(), cfg.stride) - y[:, None, None]
    d2 = dx * dx + dy * dy                                                                   # [N, w, w]
    inside = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H)
    value = torch.where((d2 <= r2) & inside, torch.exp(d2 * (-1 / (2 * cfg.keypoint_sigma ** 2))), 0.0)
    # cells off the map get value 0 at a clamped (valid) index: a no-op under max, no compaction needed
    cell = iy.clamp(0, H - 1) * W + ix.clamp(0, W - 1)
    flat = out.view(-1)
    flat.scatter_reduce_(0, ((b * C + channel0 + k)[:, None, None] * (H * W) + cell).reshape(-1),
                         value.reshape(-1), reduce="amax")
    flat.scatter_reduce_(0, ((b * C + max_channel)[:, None, None] * (H * W) + cell).reshape(-1),
                         value.reshape(-1), reduce="amax")


def _splat_limbs(out, kp, limbs, channel0: int, cfg: TargetConfig):
    """Max-combine each limb's segment-distance Gaussian into out[:, channel0 + l] (in place)."""
    B, C, H, W = out.shape
    if not len(limbs):
        return
    ends = torch.tensor(limbs, device=out.device, dtype=torch.long)             # [L, 2]
    a, e = kp[:, :, ends[:, 0]], kp[:, :, ends[:, 1]]                            # [B, P, L, 3]
    b, p, l = ((a[..., 2] > 0) & (e[..., 2] > 0)).nonzero(as_tuple=True)
    if not len(b):
        return
    ax, ay, bx, by = a[b, p, l, 0], a[b, p, l, 1], e[b, p, l, 0], e[b, p, l, 1]
    rl = cfg.limb_half_width()
    # map cells that can lie within rl of the segment: its box widened by rl, clipped to the map
    x0 = torch.ceil(input_to_map(torch.minimum(ax, bx) - rl, cfg.stride)).long().clamp(0, W)
    x1 = torch.floor(input_to_map(torch.maximum(ax, bx) + rl, cfg.stride)).long().clamp(-1, W - 1)
    y0 = torch.ceil(input_to_map(torch.minimum(ay, by) - rl, cfg.stride)).long().clamp(0, H)
    y1 = torch.floor(input_to_map(torch.maximum(ay, by) + rl, cfg.stride)).long().clamp(-1, H - 1)
    ntx = ((x1 - x0 + 1).clamp_min(0) + _TILE - 1) // _TILE
    nty = ((y1 - y0 + 1).clamp_min(0) + _TILE - 1) // _TILE
    owner = torch.repeat_interleave(torch.arange(len(b), device=out.device), ntx * nty)  # [T] limb of each tile
    t = torch.arange(len(owner), device=out.device) - (torch.cumsum(ntx * nty, 0) - ntx * nty)[owner]
    tx0 = x0[owner] + (t % ntx[owner]) * _TILE   # first cell of each tile
    ty0 = y0[owner] + (t // ntx[owner]) * _TILE
    # drop tiles whose centre is farther from the segment than rl + the tile's half diagonal
    half = (_TILE - 1) / 2
    centre2 = segment_distance2(map_to_input(tx0 + half, cfg.stride), map_to_input(ty0 + half, cfg.stride),
                                ax[owner], ay[owner], bx[owner], by[owner])
    near = centre2 <= (rl + half * cfg.stride * math.sqrt(2) + 1) ** 2
    owner, tx0, ty0 = owner[near], tx0[near], ty0[near]
    if not len(owner):
        return
    off = torch.arange(_TILE, device=out.device)
    ix = tx0[:, None, None] + off[None, None, :]                                 # [T, 1, TILE]
    iy = ty0[:, None, None] + off[None, :, None]                                 # [T, TILE, 1]
    d2 = segment_distance2(map_to_input(ix.float(), cfg.stride), map_to_input(iy.float(), cfg.stride),
                           *(v[owner, None, None] for v in (ax, ay, bx, by)))  # [T, TILE, TILE]
    keep = (d2 <= rl * rl) & (ix <= x1[owner, None, None]) & (iy <= y1[owner, None, None])
    value = torch.where(keep, torch.exp(d2 * (-1 / (2 * cfg.limb_sigma ** 2))), 0.0)
    cell = iy.clamp(max=H - 1) * W + ix.clamp(max=W - 1)
    index = (b * C + channel0 + l)[owner, None, None] * (H * W) + cell
    out.view(-1).scatter_reduce_(0, index.reshape(-1), value.reshape(-1), reduce="amax")


def segment_distance2(px, py, ax, ay, bx, by):
    """Squared distance from points (px, py) to segments a-b (broadcasting), input pixels.

    A degenerate segment (a == b) is the point a. The CUDA kernel computes the same expression.
    """
    dx, dy = bx - ax, by - ay
    len2 = dx * dx + dy * dy
    t = ((px - ax) * dx + (py - ay) * dy) / torch.where(len2 > 0, len2, torch.ones_like(len2))
    t = t.clamp(0, 1)
    cx, cy = ax + t * dx, ay + t * dy
    return (px - cx) ** 2 + (py - cy) ** 2
