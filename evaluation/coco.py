"""COCO keypoint results and COCOeval: people -> results json -> the ten COCO numbers.

    gt = load_coco(annotations_json)                       # pycocotools.coco.COCO, quietly
    results = people_to_results(people, image_id, skeleton, scale)
    stats = evaluate_keypoints(gt, all_results, image_ids)  # {"AP": ..., "AP50": ..., ...}

A result is {"image_id", "category_id": 1, "keypoints": [x1, y1, v1, ...] (the dataset's K
keypoints in original image pixels; v = the keypoint's score, a missing keypoint is 0, 0, 0),
"score"}: the format of COCO's keypoint detection results.
"""
import contextlib
import io
import json
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.files import write_text_atomic
from core.frame import input_to_image

# pycocotools' stats order for iouType "keypoints"
STAT_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")
PERSON_CATEGORY = 1


def load_coco(path):
    """COCO ground truth from a keypoints json; a missing or malformed file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such annotations file")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path}: not valid json ({e})") from None
    if not isinstance(data, dict) or not {"images", "annotations"} <= set(data):
        raise UserError(f"{path}: not a COCO annotations file (needs 'images' and 'annotations')")
    data.setdefault("categories", [{"id": PERSON_CATEGORY, "name": "person"}])
    return coco_from_dict(data)


def coco_from_dict(data: dict):
    """pycocotools COCO object from an in-memory annotations dict, without its prints."""
    from pycocotools.coco import COCO
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def people_to_results(people: list, image_id: int, skeleton, scale: float) -> list:
    """COCO results of one image's people.

    Args:
        people: grouping output: {"keypoints": [K', 3] (x, y, score) input pixels, "score"}.
        image_id: the COCO image id.
        skeleton: drops the derived keypoints (dataset's K in its order remain).
        scale: input pixels per original pixel (core.frame.inference_scale).
    """
    results = []
    for p in people:
        k = skeleton.drop_derived(p["keypoints"]).astype(np.float64)
        found = k[:, 2] > 0
        k[found, :2] = input_to_image(k[found, :2], scale)
        k[~found] = 0
        results.append({"image_id": int(image_id), "category_id": PERSON_CATEGORY,
                        "keypoints": [round(float(v), 2) for v in k.reshape(-1)],
                        "score": round(float(p["score"]), 6)})
    return results


def gt_results(coco_gt, image_ids=None) -> list:
    """Results that copy the ground truth (each labelled person, score 1): AP 1.0 by construction."""
    ids = coco_gt.getImgIds() if image_ids is None else image_ids
    out = []
    for ann in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=ids, iscrowd=False)):
        if ann.get("num_keypoints", 0) > 0:
            out.append({"image_id": ann["image_id"], "category_id": PERSON_CATEGORY,
                        "keypoints": list(ann["keypoints"]), "score": 1.0})
    return out


def evaluate_keypoints(coco_gt, results: list, image_ids=None) -> dict:
    """COCOeval (keypoints) of `results` on `image_ids` (default all) -> {name: value} of STAT_NAMES.

    No results at all (nobody found anywhere) gives zeros instead of pycocotools' crash; so does
    a ground truth with nobody to find (pycocotools reports -1 there: kept as is).
    """
    from pycocotools.cocoeval import COCOeval
    if not results:
        return {name: 0.0 for name in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        if image_ids is not None:
            ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}


def write_results(results: list, path) -> Path:
    """Write a results json atomically (temporary name in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(results))


def format_table(stats: dict) -> str:
    """The ten COCO numbers as a two-line table."""
    head = " ".join(f"{n:>6}" for n in STAT_NAMES)
    vals = " ".join(f"{stats[n]:6.3f}" for n in STAT_NAMES)
    return f"{head}\n{vals}"
