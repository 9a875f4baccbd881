"""Ideal maps: what a perfect network would output for an image, rendered from its ground truth.

The image is taken to the inference frame (height `target_height`, core.frame) and the
keypoints are rendered there with the training target renderer (pipelines.targets, CPU
reference), at the map size the network would produce for that input. Grouping these maps and
evaluating the result measures the grouping alone (tools/gt_upper_bound.py, tests).

    results, seconds = group_ideal_maps(coco_gt, coco_gt.getImgIds(), skeleton, GroupingConfig(), 512)
    results, seconds = group_truth(shard_truth("shards/val"), skeleton, GroupingConfig(), 512)

The truth is a json's (coco_truth) or what shards hold (shard_truth: the keypoints make_shards
kept, so the maps are the training targets of those images, un-augmented).
"""
import time

import numpy as np
import torch
from tqdm import tqdm

from evaluation.coco import people_to_results
from core.frame import image_to_input, inference_scale, map_size, scaled_size
from grouping import GroupingConfig, group
from pipelines.targets import TargetConfig, render_targets


def coco_keypoints(coco_gt, image_id: int) -> np.ndarray:
    """[P, K, 3] float32 (x, y, v) of the people of an image with at least one labelled keypoint
    (crowd regions excluded), original pixels."""
    anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id], iscrowd=False))
    kpts = [np.asarray(a["keypoints"], np.float32).reshape(-1, 3) for a in anns
            if a.get("num_keypoints", 0) > 0]
    if not kpts:
        return np.zeros((0, 0, 3), np.float32)
    return np.stack(kpts)


def ideal_maps(keypoints: np.ndarray, height: int, width: int, skeleton, target_height: int,
               cfg: TargetConfig = TargetConfig()):
    """Render the maps of one image in the inference frame.

    Args:
        keypoints: [P, K, 3] (x, y, v) dataset keypoints in original pixels (P may be 0).
        height, width: the original image's size, pixels.
        skeleton: adds the derived keypoints and fixes the channel order.
        target_height: the inference frame's height, pixels (512 for COCO).
        cfg: TargetConfig (stride, sigmas).
    Returns:
        (maps [C, h, w] float32 CPU tensor, scale: input pixels per original pixel).
    """
    scale = inference_scale(height, target_height)
    h, w = map_size(*scaled_size(height, width, scale), cfg.stride)
    kp = np.zeros((1, max(len(keypoints), 1), skeleton.num_keypoints, 3), np.float32)
    if len(keypoints):
        k = keypoints.astype(np.float32).copy()
        labelled = k[..., 2] > 0
        k[..., :2] = np.where(labelled[..., None], image_to_input(k[..., :2], scale), 0)
        kp[0] = skeleton.add_derived(k)
    masks = torch.zeros(1, 2, h, w)
    maps = render_targets(torch.from_numpy(kp), masks, skeleton, cfg)[0]
    return maps, scale


def coco_truth(coco_gt, image_ids):
    """(image_id, keypoints [P, K, 3] original pixels, height, width) of each image of a json."""
    for image_id in image_ids:
        info = coco_gt.loadImgs(image_id)[0]
        yield image_id, coco_keypoints(coco_gt, image_id), info["height"], info["width"]


def shard_truth(shards_dir):
    """coco_truth of every sample of a shards folder, in shard order."""
    from shards.reader import iter_samples
    for s in iter_samples(shards_dir):
        yield s["image_id"], s["kpts"], s["meta"]["height"], s["meta"]["width"]


def group_ideal_maps(coco_gt, image_ids, skeleton, cfg: GroupingConfig, height: int,
                     target_cfg: TargetConfig = TargetConfig(), progress: bool = True):
    """Ideal maps -> grouping -> COCO results for `image_ids` of a COCO ground truth (group_truth)."""
    return group_truth(coco_truth(coco_gt, image_ids), skeleton, cfg, height, target_cfg, progress,
                       total=len(image_ids))


def group_truth(truth, skeleton, cfg: GroupingConfig, height: int, target_cfg: TargetConfig = TargetConfig(),
                progress: bool = True, total=None):
    """Ideal maps -> grouping -> COCO results of each image of `truth` (coco_truth, shard_truth).

    Returns (results list, seconds [N] np.ndarray the grouping took on each image).
    """
    results, seconds = [], []
    for image_id, keypoints, image_height, image_width in tqdm(truth, total=total, desc="ideal maps",
                                                               unit="img", disable=not progress):
        maps, scale = ideal_maps(keypoints, image_height, image_width, skeleton, height, target_cfg)
        t0 = time.perf_counter()
        people = group(maps, skeleton, cfg, target_cfg.stride)
        seconds.append(time.perf_counter() - t0)
        results += people_to_results(people, image_id, skeleton, scale)
    return results, np.asarray(seconds)
