"""Limb candidates: every pair of end-point candidates of every limb of a batch, scored at once.

For limb l = (a, b) and image i, each pair (candidate of keypoint a, candidate of keypoint b)
is scored by sampling limb map l at evenly spaced points on the segment between them
(bilinear, map cells). A pair is a connection when enough samples are on the limb and its mean
plus the length prior is positive (the original's two criteria). Tensor operations only, on
the device of the maps; no Python loop over images, limbs or pairs.
"""
import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from grouping.peaks import Peaks, storage_view


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
    B, K, L = num_images, num_kinds, len(limbs)
    counts = torch.bincount(peaks.image * K + peaks.kind, minlength=B * K)  # [B * K] per (image, kind)
    first = counts.cumsum(0) - counts
    ends = _limb_planes(B, K, limbs)                                        # [2, B * L]
    n, at = torch.take(counts, ends), torch.take(first, ends)               # [2, B * L] each
    run = torch.repeat_interleave(n[0] * n[1])  # [P] the (image, limb) of each pair
    q = torch.arange(len(run), device=run.device) - torch.searchsorted(run, run)  # pair within its run
    n_b, at_a, at_b = torch.cat([n[1:], at]).index_select(1, run)
    return run // L, run % L, at_a + q // n_b, at_b + q % n_b


def _limb_planes(B: int, K: int, limbs: torch.Tensor) -> torch.Tensor:
    """[2, B * L] (image, kind) planes image * K + a and image * K + b of every (image, limb)."""
    images = torch.arange(B, device=limbs.device).view(1, B, 1) * K
    return (images + limbs.T.unsqueeze(1)).reshape(2, -1)


def sample_bilinear(maps: torch.Tensor, image, channel, xy) -> torch.Tensor:
    """Values of maps[image, channel] at points xy.

    Args:
        maps: [B, C, H, W] float, any strides (read in place, no copy).
        image, channel: [P] long.
        xy: [P, S, 2] float, map cells (x, y); points outside the map read the border.
    Returns:
        [P, S] float32.
    """
    B, C, H, W = maps.shape
    sb, sc, sy, sx = maps.stride()
    size = xy.new_tensor([W - 1, H - 1])
    xy = torch.minimum(xy.clamp_min(0), size)
    corner = torch.minimum(xy.floor(), (size - 1).clamp_min(0))  # the cell up-left of the point
    frac = xy - corner
    at = (image * sb + channel * sc).unsqueeze(1) + (corner.long() * xy.new_tensor([sx, sy], dtype=torch.long)).sum(-1)
    dx, dy = (sx if W > 1 else 0), (sy if H > 1 else 0)
    v = torch.take(storage_view(maps), at + _corner_steps(dx, dy, maps.device))  # [4, P, S]: (x0, y0) (x1, y0) (x0, y1) (x1, y1)
    across = torch.lerp(v[0::2], v[1::2], frac[..., 0])  # [2, P, S]: rows y0 and y1
    return torch.lerp(across[0], across[1], frac[..., 1])


@lru_cache(maxsize=64)
def _corner_steps(dx: int, dy: int, device) -> torch.Tensor:
    return torch.tensor([0, dx, dy, dx + dy], device=device).view(4, 1, 1)


def score_limbs(limb_maps: torch.Tensor, peaks: Peaks, limbs, num_kinds: int, cfg,
                heights=None) -> Connections:
    """Score every candidate pair of every limb of a batch; keep those that pass.

    Args:
        limb_maps: [B, L, H, W] float, one map per limb in skeleton.limbs order (any strides:
            a channel slice of the network's maps is read in place).
        peaks: Peaks of the same batch.
        limbs: [L, 2] keypoint index pairs (skeleton.limbs).
        num_kinds: K', keypoint types (peaks.kind < K').
        cfg: GroupingConfig (limb_samples, limb_sample_threshold, limb_min_fraction,
            limb_length_ratio).
        heights: optional [B] valid image heights in cells (padded batches); default H.
    Returns:
        Connections, sorted by image, then best first: by descending score x the geometric
        mean of the two end points' peak heights (capped at 1).
    """
    B, L, H, W = limb_maps.shape
    dev = limb_maps.device
    limbs = torch.as_tensor(limbs, device=dev, dtype=torch.long).view(-1, 2)
    image, limb, start, end = candidate_pairs(peaks, limbs, B, num_kinds)
    if len(image) == 0:
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        return Connections(empty, empty, empty, empty, torch.zeros(0, device=dev))

    a = peaks.xy.index_select(0, start)
    ab = peaks.xy.index_select(0, end) - a  # [P, 2] each
    t = torch.linspace(0, 1, cfg.limb_samples, device=dev).view(1, -1, 1)
    values = sample_bilinear(limb_maps, image, limb, a.unsqueeze(1) + ab.unsqueeze(1) * t)  # [P, S]

    need = math.ceil(cfg.limb_min_fraction * cfg.limb_samples - 1e-9)  # samples on the limb
    on_limb = (values > cfg.limb_sample_threshold).sum(1) >= need
    length = ab.norm(dim=1).clamp_min(1e-3)
    height = float(H) if heights is None else \
        torch.as_tensor(heights, device=dev, dtype=torch.float32).index_select(0, image)
    prior = (cfg.limb_length_ratio * height / length - 1).clamp(max=0)
    score = values.mean(1) + prior
    # by image, then best first: the order assembly takes them in. "Best" weighs in how sure
    # the two end points are (the geometric mean of their peaks): a weak spurious peak beside a
    # true one lies on the same limb map and scores as high on it, and taken first it displaces
    # the true keypoint. A model's maps have many such peaks: the overfit recipe's AP went from
    # 0.540 to 0.781 on the same maps (BENCHMARKS.md). Heights are capped at 1, a target's top:
    # on ideal maps they are 1, except where two people's Gaussians overlap and bend the
    # refinement's fit (0.996..1.006); uncapped, that reordered near-equal connections of two
    # embracing people (sample val AP 0.981 -> 0.961). Pairs that fail rank last and are cut.
    keep = on_limb & (score > 0)
    sure = peaks.score.clamp(max=1)
    rank = torch.where(keep, score * (sure.index_select(0, start) * sure.index_select(0, end)).sqrt(), -1.0)
    order = torch.argsort(rank, descending=True, stable=True)[: int(keep.sum())]
    if B > 1:
        order = order.index_select(0, torch.argsort(image.index_select(0, order), stable=True))
    image, limb, start, end = torch.stack([image, limb, start, end]).index_select(1, order)
    return Connections(image, limb, start, end, score.index_select(0, order))
