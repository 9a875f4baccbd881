"""Grouping: network maps -> people (keypoint candidates, limb scores, assembly).

    from grouping import GroupingConfig, group, group_batch, to_dataset_keypoints
    people = group(maps, skeleton, GroupingConfig(), stride=4)      # maps [C, h, w], one image
    people = group_batch(maps, skeleton, cfg, stride=4, sizes=...)  # maps [B, C, h, w] -> B lists

A person is {"keypoints": np.float32 [K', 3], "score": float}: (x, y, score) per keypoint of the
skeleton (derived ones included) in input pixels of the image the maps were computed from
(pipelines.targets.map_to_input of the map cell), score = the peak's (refined) height, a missing
keypoint is (0, 0, 0). People come best first. `to_dataset_keypoints` gives the dataset's own
keypoints (COCO's 17 in COCO's order) for results files and drawing.

Steps (each vectorized over the whole batch, on the maps' device, except assembly):
    grouping/peaks.py     local maxima of the keypoint heatmaps, sub-pixel refined
    grouping/limbs.py     every candidate pair of every limb scored along its segment
    grouping/assemble.py  connections best first -> people (per image, the only Python loop)
"""
import numpy as np
import torch

from grouping.assemble import assemble
from grouping.config import GroupingConfig
from grouping.limbs import Connections, score_limbs
from grouping.peaks import Peaks, find_peaks
from pipelines.targets import map_to_input

__all__ = ["GroupingConfig", "group", "group_batch", "to_dataset_keypoints", "find_peaks",
           "score_limbs", "assemble", "Peaks", "Connections"]


@torch.inference_mode()
def group_batch(maps: torch.Tensor, skeleton, cfg: GroupingConfig, stride: int, sizes=None) -> list:
    """People in every image of a batch.

    Args:
        maps: [B, C, h, w] float, channels in skeleton.channel_slices() order (CPU or CUDA).
        skeleton: core.skeleton.Skeleton.
        cfg: GroupingConfig.
        stride: input pixels per map cell.
        sizes: optional [B, 2] (height, width) of each image's valid area in map cells, for
            batches padded to one shape; default the whole map.
    Returns:
        list over the B images of lists of people (see the module docstring), best first.
    """
    ch = skeleton.channel_slices()
    B = maps.shape[0]
    K = skeleton.num_keypoints
    maps = maps.float()
    peaks = find_peaks(maps[:, ch["keypoints"]], cfg.peak_threshold, cfg.nms_window, cfg.refine, sizes,
                       cfg.max_peaks)
    peaks = _drop_hopeless(peaks, maps[:, ch["limbs"]], cfg.min_mean_score)
    heights = None if sizes is None else torch.as_tensor(sizes, device=maps.device).view(B, 2)[:, 0]
    conns = score_limbs(maps[:, ch["limbs"]], peaks, skeleton.limbs, K, cfg, heights)

    # one transfer of the small results, then per-image slices of the sorted arrays
    p_img, p_kind = peaks.image.cpu().numpy(), peaks.kind.cpu().numpy()
    p_xy = map_to_input(peaks.xy.cpu().numpy(), stride).astype(np.float32)
    p_score = peaks.score.cpu().numpy()
    c_img, c_start, c_end = conns.image.cpu().numpy(), conns.start.cpu().numpy(), conns.end.cpu().numpy()
    c_score = conns.score.cpu().numpy()
    p_first = np.searchsorted(p_img, np.arange(B + 1))
    c_first = np.searchsorted(c_img, np.arange(B + 1))

    results = []
    for i in range(B):
        p0, p1, c0, c1 = p_first[i], p_first[i + 1], c_first[i], c_first[i + 1]
        found = assemble(p_kind[p0:p1], p_xy[p0:p1], p_score[p0:p1], c_start[c0:c1] - p0,
                         c_end[c0:c1] - p0, c_score[c0:c1], skeleton, cfg)
        results.append([_person(slots, score, p_xy[p0:p1], p_score[p0:p1]) for slots, score in found])
    return results


def _drop_hopeless(peaks: Peaks, limb_maps: torch.Tensor, floor: float) -> Peaks:
    """The peaks less those of images where nobody can pass assembly's mean-score floor.

    A person's mean score averages its peaks' heights and its connections' scores, and a
    connection scores at most its limb map's maximum. In an image whose strongest peak and limb
    maps' maximum are both below the floor, no grouping keeps anyone: an untrained network's
    maps (hundreds of weak peaks, thousands of limb pairs: BENCHMARKS.md) then cost one
    reduction instead of the whole grouping. The result is exactly the same.
    """
    if not len(peaks):
        return peaks
    B = limb_maps.shape[0]
    strongest = torch.full((B,), float("-inf"), device=peaks.score.device)
    strongest = strongest.scatter_reduce(0, peaks.image, peaks.score, "amax")
    hopeless = strongest < floor
    if not hopeless.any():
        return peaks
    hopeless &= limb_maps.amax((1, 2, 3)) < floor
    return peaks.take((~hopeless[peaks.image]).nonzero().squeeze(1))


def group(maps: torch.Tensor, skeleton, cfg: GroupingConfig, stride: int) -> list:
    """People in one image: maps [C, h, w] -> list of people (group_batch of a batch of one)."""
    return group_batch(maps.unsqueeze(0), skeleton, cfg, stride)[0]


def _person(slots: np.ndarray, score: float, xy: np.ndarray, peak_score: np.ndarray) -> dict:
    found = slots >= 0
    kpts = np.zeros((len(slots), 3), dtype=np.float32)
    kpts[found, :2] = xy[slots[found]]
    kpts[found, 2] = peak_score[slots[found]]
    return {"keypoints": kpts, "score": float(score)}


def to_dataset_keypoints(people: list, skeleton) -> list:
    """The same people with keypoints [K, 3]: the dataset's own keypoints only (derived dropped)."""
    return [{**p, "keypoints": skeleton.drop_derived(p["keypoints"])} for p in people]
