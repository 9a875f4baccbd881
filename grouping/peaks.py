"""Keypoint candidates: local maxima of the keypoint heatmaps, refined to sub-pixel positions.

All images of a batch at once, as tensor operations (CPU or GPU). Positions are in map cells,
x right and y down, cell (i, j)'s centre at (x=j, y=i); pipelines.targets.map_to_input turns
them into input pixels.
"""
from dataclasses import dataclass

import torch


@dataclass
class Peaks:
    """N keypoint candidates of a batch, sorted by (image, keypoint type, y, x).

    image [N] long, kind [N] long (keypoint index in the skeleton), xy [N, 2] float32 (map cells),
    score [N] float32 (the heatmap value at the maximum).
    """
    image: torch.Tensor
    kind: torch.Tensor
    xy: torch.Tensor
    score: torch.Tensor

    def __len__(self):
        return len(self.score)


def find_peaks(heatmaps: torch.Tensor, threshold: float, window: int = 3, refine: bool = True,
               sizes=None, max_per_kind: int = 0) -> Peaks:
    """Local maxima of every heatmap of a batch.

    Args:
        heatmaps: [B, K, H, W] float, one map per keypoint type.
        threshold: a maximum below this is no candidate.
        window: odd side of the max-pooling window, cells.
        refine: add the sub-cell offset of `subpixel_peaks`, and take its height as the score.
        sizes: optional [B, 2] (height, width) of each image's valid area in cells (a batch padded
            to one shape); candidates outside it are dropped.
        max_per_kind: keep at most this many candidates of a type per image, the highest
            (0: all). Bounds the pairs to score when maps are noise (an untrained network).
    Returns:
        Peaks, sorted by (image, kind) and within those by (y, x), or by falling score when
        max_per_kind is set. A plateau (equal neighbours) gives one candidate, its first cell in
        raster order.
    """
    heat = heatmaps.float()
    B, K, H, W = heat.shape
    dev = heat.device
    # threshold first: the few cells above it are the only ones compared with their neighbours.
    # Rows holding any such cell are found with a cheap reduction, then searched (mostly empty
    # maps make this several times faster than thresholding every cell).
    b, k, y = (heat.amax(-1) >= threshold).nonzero(as_tuple=True)
    row, x = (heat[b, k, y] >= threshold).nonzero(as_tuple=True)
    b, k, y = b[row], k[row], y[row]  # still row-major: sorted by (image, kind, y, x)
    if sizes is None:
        hv = wv = None
    else:
        sizes = torch.as_tensor(sizes, device=dev).view(B, 2)
        hv, wv = sizes[b, 0], sizes[b, 1]
        inside = (y < hv) & (x < wv)
        b, k, y, x, hv, wv = b[inside], k[inside], y[inside], x[inside], hv[inside], wv[inside]
    v = heat[b, k, y, x]

    r = window // 2
    dy, dx = torch.meshgrid(torch.arange(-r, r + 1, device=dev), torch.arange(-r, r + 1, device=dev),
                            indexing="ij")
    dy, dx = dy.flatten(), dx.flatten()
    centre = (dy == 0) & (dx == 0)
    dy, dx = dy[~centre], dx[~centre]
    earlier = (dy < 0) | ((dy == 0) & (dx < 0))  # before the centre in raster order
    around = neighbours(heat, b, k, y, x, dy, dx, hv, wv)  # [D, N]
    # a maximum of its window; on a plateau only the first cell in raster order
    keep = torch.ones_like(v, dtype=torch.bool)
    if r > 0:
        keep = (v >= around.amax(0)) & (v > around[earlier].amax(0))
    b, k, y, x, v = b[keep], k[keep], y[keep], x[keep], v[keep]
    if max_per_kind > 0 and len(v) > max_per_kind:
        b, k, y, x, v = _highest(max_per_kind, K, b, k, y, x, v)
    if sizes is not None:
        hv, wv = sizes[b, 0], sizes[b, 1]

    xy = torch.stack([x, y], dim=1).float()
    if refine and len(v):
        lr = neighbours(heat, b, k, y, x, torch.tensor([0, 0, -1, 1], device=dev),
                        torch.tensor([-1, 1, 0, 0], device=dev), hv, wv)
        offsets, v = subpixel_peaks(v, lr)
        xy = xy + offsets
    return Peaks(image=b, kind=k, xy=xy, score=v)


def _highest(n: int, K: int, b, k, y, x, v):
    """The n highest candidates of each (image, kind), sorted by (image, kind, falling score)."""
    order = torch.argsort(v, descending=True, stable=True)
    order = order[torch.argsort((b * K + k)[order], stable=True)]
    b, k, y, x, v = b[order], k[order], y[order], x[order], v[order]
    group = b * K + k
    first = torch.searchsorted(group, group, right=False)  # start of each one's group
    keep = torch.arange(len(v), device=v.device) - first < n
    return b[keep], k[keep], y[keep], x[keep], v[keep]


def neighbours(heat, b, k, y, x, dy, dx, hv=None, wv=None) -> torch.Tensor:
    """Values [D, N] of heat[b, k, y + dy, x + dx] for D offsets and N cells; -inf outside the map
    (or outside the valid area hv x wv [N] of each cell's image when given)."""
    B, K, H, W = heat.shape
    yy, xx = y + dy[:, None], x + dx[:, None]
    hv = H if hv is None else hv
    wv = W if wv is None else wv
    inside = (yy >= 0) & (yy < hv) & (xx >= 0) & (xx < wv)
    vals = heat[b[None], k[None], yy.clamp(0, H - 1), xx.clamp(0, W - 1)]
    return torch.where(inside, vals, torch.full_like(vals, float("-inf")))


def subpixel_peaks(centre: torch.Tensor, around: torch.Tensor):
    """Sub-cell positions and heights of N maxima: (offsets [N, 2] (dx, dy) in cells, each in
    [-0.5, 0.5]; heights [N]).

    Args:
        centre: [N] values at the maxima.
        around: [4, N] values left, right, above and below them (-inf outside the map).

    A parabola through the logarithm of the maximum and its two neighbours, on each axis
    separately: a Gaussian's logarithm is a parabola, so this is exact for ideal heatmaps. The x
    offset comes from the left/right neighbours, the y offset from the upper/lower ones (the
    original swapped them). A missing neighbour or a flat profile gives offset 0 on that axis.
    The height is the parabolas' value at the offsets (a Gaussian's log is a sum over the axes):
    the peak's own height wherever it fell between the cells, where the cell's value is up to
    ~5% lower for a keypoint half a cell off the grid (sigma 2.25 cells).
    """
    eps = 1e-6
    c = centre.clamp_min(eps).log()

    def axis(lo, hi):
        """(offset, rise of the log above the centre cell's at that offset) on one axis."""
        ok = torch.isfinite(lo) & torch.isfinite(hi)
        lo, hi = lo.clamp_min(eps).log(), hi.clamp_min(eps).log()
        curv = lo - 2 * c + hi  # < 0 at a strict maximum
        ok = ok & (curv < 0)
        off = 0.5 * (lo - hi) / torch.where(ok, curv, torch.full_like(curv, -1.0))
        off = torch.where(ok, off, torch.zeros_like(off)).clamp(-0.5, 0.5)
        # the parabola c + s t + curv t^2 / 2, s = (hi - lo) / 2, at t = off, less c
        rise = torch.where(ok, 0.5 * (hi - lo) * off + 0.5 * curv * off * off, torch.zeros_like(off))
        return off, rise

    (ox, rx), (oy, ry) = axis(around[0], around[1]), axis(around[2], around[3])
    height = torch.where(centre > eps, (c + rx + ry).exp(), centre)
    return torch.stack([ox, oy], dim=1), height
