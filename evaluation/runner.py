"""The evaluation loop: batches of images -> averaged maps -> people -> COCO results, timed.

    run = run_model(model, source, skeleton, prep, GroupingConfig(), scales=(1.0,), flip=True,
                    device="cuda", batch_size=8, stride=4)
    run.results, run.image_ids, run.model_s, run.grouping_s, run.wall_s

`model` is anything with predict(images [B, 3, H, W]) -> maps [B, C, H/stride, W/stride]
(model.imhn.IMHN, or a stand-in in tests); `source` yields (image_id, RGB uint8 image)
(evaluation.sources).
"""
import sys
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from evaluation.coco import people_to_results
from evaluation.inference import Preprocess, predict_maps
from grouping import GroupingConfig, group_batch


@dataclass
class Run:
    results: list = field(default_factory=list)     # COCO keypoint results
    image_ids: list = field(default_factory=list)   # every image run, in order
    model_s: float = 0.0      # resize, normalize, network (flip, scales), averaging
    grouping_s: float = 0.0   # grouping, maps on the model's device
    wall_s: float = 0.0       # everything, image decoding included


def run_model(model, source, skeleton, prep: Preprocess, cfg: GroupingConfig, scales=(1.0,),
              flip=False, device="cpu", batch_size=8, stride=4, progress=True) -> Run:
    """Every image of `source` through the model and the grouping (a tqdm bar on a terminal,
    unless `progress` is False)."""
    run = Run()
    start = time.perf_counter()
    total = len(source) if hasattr(source, "__len__") else None
    bar = tqdm(total=total, desc="eval", unit="img", disable=not (progress and sys.stderr.isatty()))
    for chunk in _chunks(iter(source), batch_size):
        ids, images = zip(*chunk)
        t0 = time.perf_counter()
        maps = predict_maps(model, list(images), prep, skeleton, scales, flip, device, stride)
        t1 = _sync(device)
        people = group_batch(maps.maps, skeleton, cfg, stride, maps.sizes)
        t2 = _sync(device)
        run.model_s += t1 - t0
        run.grouping_s += t2 - t1
        for image_id, found, scale in zip(ids, people, maps.scales):
            run.results += people_to_results(found, image_id, skeleton, scale)
        run.image_ids += ids
        bar.update(len(ids))
    bar.close()
    run.wall_s = time.perf_counter() - start
    return run


def _chunks(iterator, size):
    chunk = []
    for item in iterator:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _sync(device) -> float:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()
