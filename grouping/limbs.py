"""Limb candidates: every pair of end-point candidates of every limb of a batch, scored at once.

For limb l = (a, b) and image i, each pair (candidate of keypoint a, candidate of keypoint b)
is scored by sampling limb map l at evenly spaced points on the segment between them
(bilinear, map cells). A pair is a connection when enough samples are on the limb and its mean
plus the length prior is positive (the original's two criteria). Tensor operations only, on
the device of the maps; no Python loop over images, limbs or pairs.
"""
from dataclasses import dataclass

import torch

from grouping.peaks import Peaks


@dataclass
class Connections:
    """M accepted limb candidates of a batch.

    image [M] long, limb [M] long (index into skeleton.limbs), start [M] / end [M] long
    (indices into the Peaks: candidates of the limb's first / second keypoint), score [M] float32.
    """
    image: torch.Tensor
    limb: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor
    score: torch.Tensor

    def __len__(self):
        return len(self.score)


def candidate_pairs(peaks: Peaks, limbs: torch.Tensor, num_images: int, num_kinds: int):
    """All (image, limb, start, end) with start a candidate of the limb's first keypoint and end
    one of its second, in the same image.

    Peaks are sorted by (image, kind), so the candidates of one (image, kind) are a contiguous
    run: pair q of the run pair (image, limb) is start = first_a + q // n_b, end = first_b + q % n_b.

    Args:
        peaks: Peaks of the batch.
        limbs: [L, 2] long keypoint indices (a, b).
    Returns:
        image [P], limb [P], start [P], end [P] long tensors.
    """
    dev = peaks.score.device
    B, K, L = num_images, num_kinds, len(limbs)
    counts = torch.bincount(peaks.image * K + peaks.kind, minlength=B * K).view(B, K)
    first = (counts.flatten().cumsum(0) - counts.flatten()).view(B, K)
    n_a, n_b = counts[:, limbs[:, 0]], counts[:, limbs[:, 1]]  # [B, L]
    n_pairs = (n_a * n_b).flatten()                             # [B * L]
    run = torch.repeat_interleave(torch.arange(B * L, device=dev), n_pairs)
    q = torch.arange(len(run), device=dev) - (n_pairs.cumsum(0) - n_pairs)[run]
    image, limb = run // L, run % L
    nb = n_b.flatten()[run]
    start = first[image, limbs[limb, 0]] + q // nb
    end = first[image, limbs[limb, 1]] + q % nb
    return image, limb, start, end


def sample_bilinear(maps: torch.Tensor, image, channel, xy) -> torch.Tensor:
    """Values of maps[image, channel] at points xy.

    Args:
        maps: [B, L, H, W] float.
        image, channel: [P] long.
        xy: [P, S, 2] float, map cells (x, y); points outside the map read the border.
    Returns:
        [P, S] float32.
    """
    B, L, H, W = maps.shape
    flat = maps.reshape(-1).float()
    x = xy[..., 0].clamp(0, W - 1)
    y = xy[..., 1].clamp(0, H - 1)
    x0 = x.floor().clamp(max=W - 2 if W > 1 else 0)
    y0 = y.floor().clamp(max=H - 2 if H > 1 else 0)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=W - 1), (y0 + 1).clamp(max=H - 1)
    base = ((image * L + channel) * (H * W)).unsqueeze(1)
    v00 = flat[base + y0 * W + x0]
    v01 = flat[base + y0 * W + x1]
    v10 = flat[base + y1 * W + x0]
    v11 = flat[base + y1 * W + x1]
    return (v00 * (1 - fx) + v01 * fx) * (1 - fy) + (v10 * (1 - fx) + v11 * fx) * fy


def score_limbs(limb_maps: torch.Tensor, peaks: Peaks, limbs, num_kinds: int, cfg,
                heights=None) -> Connections:
    """Score every candidate pair of every limb of a batch; keep those that pass.

    Args:
        limb_maps: [B, L, H, W] float, one map per limb in skeleton.limbs order.
        peaks: Peaks of the same batch.
        limbs: [L, 2] keypoint index pairs (skeleton.limbs).
        num_kinds: K', keypoint types (peaks.kind < K').
        cfg: GroupingConfig (limb_samples, limb_sample_threshold, limb_min_fraction,
            limb_length_ratio).
        heights: optional [B] valid image heights in cells (padded batches); default H.
    Returns:
        Connections, sorted by image, then best first: by descending score x the geometric
        mean of the two end points' peak values.
    """
    B, L, H, W = limb_maps.shape
    dev = limb_maps.device
    limbs = torch.as_tensor(limbs, device=dev, dtype=torch.long).view(-1, 2)
    image, limb, start, end = candidate_pairs(peaks, limbs, B, num_kinds)
    if len(image) == 0:
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        return Connections(empty, empty, empty, empty, torch.zeros(0, device=dev))

    t = torch.linspace(0, 1, cfg.limb_samples, device=dev).view(1, -1, 1)
    a, b = peaks.xy[start].unsqueeze(1), peaks.xy[end].unsqueeze(1)
    values = sample_bilinear(limb_maps, image, limb, a + (b - a) * t)  # [P, S]

    on_limb = (values > cfg.limb_sample_threshold).float().mean(1) >= cfg.limb_min_fraction
    length = (peaks.xy[end] - peaks.xy[start]).norm(dim=1).clamp_min(1e-3)
    if heights is None:
        height = torch.full_like(length, float(H))
    else:
        height = torch.as_tensor(heights, device=dev, dtype=torch.float32)[image]
    prior = (cfg.limb_length_ratio * height / length - 1).clamp(max=0)
    score = values.mean(1) + prior
    keep = on_limb & (score > 0)

    image, limb, start, end, score = image[keep], limb[keep], start[keep], end[keep], score[keep]
    # by image, then best first: the order assembly takes them in. "Best" weighs in how sure
    # the two end points are (the geometric mean of their peaks): a weak spurious peak beside a
    # true one lies on the same limb map and scores as high on it, and taken first it displaces
    # the true keypoint. A model's maps have many such peaks: the overfit recipe's AP went from
    # 0.540 to 0.781 on the same maps (BENCHMARKS.md). Ideal maps keep their order: the peaks'
    # refined heights (grouping/peaks.py) are all 1 there.
    rank = score * (peaks.score[start] * peaks.score[end]).sqrt()
    order = torch.argsort(rank, descending=True, stable=True)
    order = order[torch.argsort(image[order], stable=True)]
    return Connections(image[order], limb[order], start[order], end[order], score[order])
