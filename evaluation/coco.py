"""COCO keypoint results and COCOeval: people -> results json -> the ten COCO numbers.

    gt = load_coco(annotations_json)                       # pycocotools.coco.COCO, quietly
    check_ground_truth(gt, skeleton, annotations_json)     # its keypoints are the skeleton's
    results = people_to_results(people, image_id, skeleton, scale)
    stats = evaluate_keypoints(gt, all_results, image_ids, skeleton.sigmas)  # {"AP": ..., ...}

A result is {"image_id", "category_id": 1, "keypoints": [x1, y1, v1, ...] (the dataset's K
keypoints in original image pixels; v = the keypoint's score, a missing keypoint is 0, 0, 0),
"score"}: the format of COCO's keypoint detection results. OKS uses the skeleton's sigmas, and
a ground-truth person's `area`; where the json gives none (CrowdPose's has none) it is 0.53 x
its box, the area CrowdPose's own toolkit scores every person with.
"""
import contextlib
import io
import json
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.files import read_json, write_text_atomic
from core.frame import input_to_image

# pycocotools' stats order for iouType "keypoints"
STAT_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")
PERSON_CATEGORY = 1
BOX_AREA_FRACTION = 0.53  # crowdposetools/cocoeval.py: a person's area is 0.53 x its box


def load_coco(path):
    """COCO ground truth from a keypoints json; a missing or malformed file is a UserError."""
    data = read_json(path, "annotations file")
    if not isinstance(data, dict) or not {"images", "annotations"} <= set(data):
        raise UserError(f"{path}: not a COCO annotations file (needs 'images' and 'annotations')")
    data.setdefault("categories", [{"id": PERSON_CATEGORY, "name": "person"}])
    return coco_from_dict(data)


def coco_from_dict(data: dict):
    """pycocotools COCO object from an in-memory annotations dict, without its prints.

    Annotations without an `area` get BOX_AREA_FRACTION x their box's (see the module)."""
    from pycocotools.coco import COCO
    for ann in data.get("annotations", []):
        if isinstance(ann, dict) and ann.get("area") is None and len(ann.get("bbox") or ()) == 4:
            ann["area"] = BOX_AREA_FRACTION * float(ann["bbox"][2]) * float(ann["bbox"][3])
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def keypoint_names(coco_gt):
    """The person category's keypoint names of a ground truth (categories[0].keypoints), or None."""
    cats = [c for c in coco_gt.dataset.get("categories") or [] if isinstance(c, dict)]
    person = [c for c in cats if c.get("id") == PERSON_CATEGORY] or cats
    names = person[0].get("keypoints") if person else None
    return [str(n) for n in names] if isinstance(names, list) and names else None


def check_ground_truth(coco_gt, skeleton, where):
    """A UserError unless the ground truth holds `skeleton`'s keypoints: its categories' names
    when it has them, else the length of its annotations' keypoints."""
    names = keypoint_names(coco_gt)
    if names is not None:
        skeleton.check_keypoint_names(names, f"{where} (categories[0].keypoints)")
        return
    for ann in coco_gt.dataset.get("annotations", []):
        k = ann.get("keypoints") if isinstance(ann, dict) else None
        if isinstance(k, list) and len(k) != 3 * skeleton.num_dataset:
            raise UserError(f"{where}: holds {len(k) // 3} keypoints per person, the skeleton "
                            f"{skeleton.describe()} has {skeleton.num_dataset}; name the data's "
                            f"skeleton yaml with --skeleton")


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


def evaluate_keypoints(coco_gt, results: list, image_ids=None, sigmas=None) -> dict:
    """COCOeval (keypoints) of `results` on `image_ids` (default all) -> {name: value} of STAT_NAMES.

    sigmas: [K] OKS sigmas of the dataset keypoints (skeleton.sigmas); None: pycocotools' own,
    COCO's 17. No results at all (nobody found anywhere) gives zeros instead of pycocotools'
    crash; a ground truth with nobody to find gives pycocotools' -1, kept as is.
    """
    from pycocotools.cocoeval import COCOeval
    if not results:
        return {name: 0.0 for name in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas, np.float64)
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
