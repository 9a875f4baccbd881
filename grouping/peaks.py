"""Keypoint candidates: local maxima of the keypoint heatmaps, refined to sub-pixel positions.

All images of a batch at once, as tensor operations (CPU or GPU). Positions are in map cells,
x right and y down, cell (i, j)'s centre at (x=j, y=i); pipelines.targets.map_to_input turns
them into input pixels.
"""
from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass
class Peaks:
    """N keypoint candidates of a batch, sorted by (image, keypoint type, falling score).

    image [N] long, kind [N] long (keypoint index in the skeleton), xy [N, 2] float32 (map cells),
    score [N] float32 (the peak's height: refined between the cells by `subpixel_peaks`, else
    the heatmap value at the maximum).
    """
    image: torch.Tensor
    kind: torch.Tensor
    xy: torch.Tensor
    score: torch.Tensor

    def __len__(self):
        return len(self.score)

    def take(self, index: torch.Tensor) -> "Peaks":
        """The candidates at `index` [M] (long), in that order."""
        return Peaks(*(t.index_select(0, index) for t in (self.image, self.kind, self.xy, self.score)))


def find_peaks(heatmaps: torch.Tensor, threshold: float, window: int = 3, refine: bool = True,
               sizes=None, max_per_kind: int = 0) -> Peaks:
    """Local maxima of every heatmap of a batch.

    Args:
        heatmaps: [B, K, H, W] float, one map per keypoint type (any strides).
        threshold: a maximum below this is no candidate.
        window: odd side of the square window a candidate is the maximum of, cells.
        refine: add the sub-cell offset of `subpixel_peaks`, and take its height as the score.
        sizes: optional [B, 2] (height, width) of each image's valid area in cells (a batch padded
            to one shape); candidates outside it are dropped.
        max_per_kind: keep at most this many candidates of a type per image, the highest
            (0: all). Bounds the pairs to score when maps are noise (an untrained network).
    Returns:
        Peaks, sorted by (image, kind) and within those by falling score (ties in raster
        order). A plateau (equal neighbours) gives one candidate, its first cell in raster order.
    """
    B, K, H, W = heatmaps.shape
    r = window // 2
    pad = max(r, 1)  # refinement reads one cell beyond a peak's own, whatever the window
    # One padded copy holds everything: -inf around the map and beyond each image's valid area,
    # so no cell there is a maximum or a neighbour, and every later read is a plain offset into
    # its storage. Grouping one image costs the number of tensor operations more than their
    # size (BENCHMARKS.md): one pass over the maps, then one gather for all neighbours rather
    # than per-candidate bounds checks. The copy keeps the maps' memory layout (the model's
    # output is channels_last): a transposing copy would cost more than all the rest.
    layout = torch.channels_last if heatmaps.stride(1) == 1 and K > 1 else torch.contiguous_format
    heat = torch.empty((B, K, H + 2 * pad, W + 2 * pad), device=heatmaps.device, memory_format=layout)
    heat[:, :, pad:pad + H, pad:pad + W] = heatmaps
    heat[:, :, :pad] = heat[:, :, :, :pad] = float("-inf")  # above and left of the map
    valid = [(H, W)] * B if sizes is None else torch.as_tensor(sizes).view(B, 2).tolist()
    for i, (h, w) in enumerate(valid):  # below and right of each image's valid area
        heat[i, :, pad + h:] = heat[i, :, :, pad + w:] = float("-inf")
    flat = storage_view(heat)
    cell = (flat >= threshold).nonzero().squeeze(1)  # [N] storage indices of the cells above it
    v = flat.index_select(0, cell)

    # the window's cells and the four the refinement reads, one gather [D, N], in this order:
    # window cells before the centre in raster order (left and above last), then those after it
    # (right and below first), so that rows [n - 2, n + 2) are left, above, right, below
    n, offsets = _neighbour_offsets(r, heat.stride(2), heat.stride(3), heat.device)
    around = torch.take(flat, cell + offsets)
    if r > 0:  # a maximum of its window; on a plateau only its first cell in raster order
        keep = ((v > around[:n].amax(0)) & (v >= around[n:].amax(0))).nonzero().squeeze(1)
        cell, v, around = cell.index_select(0, keep), v.index_select(0, keep), around.index_select(1, keep)

    b, k, y, x = ((cell // st) % size for st, size in zip(heat.stride(), heat.shape))
    plane = b * K + k
    order = torch.argsort(v, descending=True, stable=True)  # by plane, then falling score
    order = order.index_select(0, torch.argsort(plane.index_select(0, order), stable=True))
    if max_per_kind > 0 and len(v) > max_per_kind:
        group = plane.index_select(0, order)
        rank = torch.arange(len(v), device=v.device) - torch.searchsorted(group, group)  # in its plane
        order = order[rank < max_per_kind]
    xybk = torch.stack([x, y, b, k]).index_select(1, order)
    v, around = v.index_select(0, order), around[n - 2:n + 2].index_select(1, order)
    xy = xybk[:2].T.float() - pad
    if refine and len(v):
        offsets, v = subpixel_peaks(v, around[:2], around[2:])
        xy = xy + offsets
    return Peaks(image=xybk[2], kind=xybk[3], xy=xy, score=v)


@lru_cache(maxsize=64)
def _neighbour_offsets(r: int, row: int, col: int, device) -> tuple:
    """(n, [D, 1] storage offsets): the order of find_peaks' gather for a window of radius r
    and a map with these row and column strides; n = cells before the centre (0 when r = 0)."""
    cross = [(0, -1), (-1, 0), (0, 1), (1, 0)]  # left, above, right, below
    window = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]
    before = [c for c in window[: len(window) // 2] if c not in cross] + cross[:2]
    after = cross[2:] + [c for c in window[len(window) // 2:] if c not in cross]
    cells = before + after
    return len(before), torch.tensor([[dy * row + dx * col] for dy, dx in cells], device=device)


def storage_view(t: torch.Tensor) -> torch.Tensor:
    """The storage a strided tensor spans, as a 1-D view (no copy): element (i0, i1, ...) of t
    is at sum(i_d * t.stride(d)). Works for any layout and any slice of one (a channel range
    of channels_last maps), so maps are read in place by computed offsets."""
    span = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride())) if t.numel() else 0
    return t.as_strided((span,), (1,))


def subpixel_peaks(centre: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Sub-cell positions and heights of N maxima: (offsets [N, 2] (dx, dy) in cells, each in
    [-0.5, 0.5]; heights [N]).

    Args:
        centre: [N] values at the maxima.
        lo: [2, N] values left of and above them; hi: [2, N] right of and below them (-inf
            outside the map).

    A parabola through the logarithm of the maximum and its two neighbours, on each axis
    separately: a Gaussian's logarithm is a parabola, so this is exact for ideal heatmaps. The x
    offset comes from the left/right neighbours, the y offset from the upper/lower ones (the
    original swapped them). A missing neighbour or a flat profile gives offset 0 on that axis.
    The height is the parabolas' value at the offsets (a Gaussian's log is a sum over the axes):
    the peak's own height wherever it fell between the cells, where the cell's value is up to
    ~5% lower for a keypoint half a cell off the grid (sigma 2.25 cells).
    """
    eps = 1e-6
    values = torch.cat([centre[None], lo, hi])  # [5, N], both axes at once
    finite = torch.isfinite(values)
    logs = values.clamp_min(eps).log()
    c, lo, hi = logs[0], logs[1:3], logs[3:5]
    slope2 = hi - lo           # twice the slope at the centre
    curv = lo + hi - 2 * c     # < 0 at a strict maximum
    ok = finite[1:3] & finite[3:5] & (curv < 0)
    off = (-0.5 * slope2 / torch.where(ok, curv, -1.0)).clamp(-0.5, 0.5) * ok
    # the parabola c + s t + curv t^2 / 2 (s = slope2 / 2) at t = off, less c; 0 where off is
    rise = off * (0.5 * slope2 + 0.5 * curv * off)
    height = torch.where(centre > eps, (c + rise.sum(0)).exp(), centre)
    return off.T, height
