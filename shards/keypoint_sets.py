"""Another keypoint set's json from a COCO-style one: shared keypoints kept, a few placed by rule.

    data = convert(json.loads(path.read_bytes()), skeleton, str(path), boxes_only=False, crowd_index=False)

The output is a COCO-style person-keypoints json whose categories[0].keypoints are the skeleton's
dataset keypoints, in its order (what make_shards and eval.py check). Each of them is copied, by
name, from the source json, or, when the source has no keypoint of that name, placed by a rule:

    neck            the midpoint of left_shoulder and right_shoulder when both are labelled
                    (visibility the lower of theirs)
    head, head_top  the top of the head: the centre of the labelled face keypoints (nose, eyes,
                    ears) moved away from the neck by half the distance between them (without a
                    neck, the face centre), visibility 2

Placed keypoints are approximations made to try a keypoint set on data labelled for another
(tools/convert_keypoints.py, the tests' CrowdPose and AI Challenger sets made from the COCO
sample), not labels to train a model for another benchmark with. A placed keypoint outside its
image is moved to the nearest pixel inside it, since make_shards drops keypoints outside.

boxes_only drops every annotation's segmentation and area, as CrowdPose's and AI Challenger's
jsons have none (make_shards then uses the boxes as regions; eval fills the areas). crowd_index
gives every image its crowdIndex by CrowdPose's definition (crowd_index below).
"""
import numpy as np

from core.errors import UserError

FACE = ("nose", "left_eye", "right_eye", "left_ear", "right_ear")
SHOULDERS = ("left_shoulder", "right_shoulder")
HEAD_NAMES = ("head", "head_top")
PLACED = ("neck",) + HEAD_NAMES
PERSON_CATEGORY = 1


def convert(data: dict, skeleton, source: str = "json", boxes_only: bool = False, crowd_index: bool = False) -> dict:
    """A COCO-style json dict -> the same images and people with `skeleton`'s keypoints.

    Args:
        data: the source json (COCO person keypoints: categories with keypoint names).
        skeleton: core.skeleton.Skeleton whose dataset keypoints the output holds.
        source: the source's name, for messages.
        boxes_only: drop segmentation and area (see the module).
        crowd_index: add each image's crowdIndex (CrowdPose's).
    Returns:
        the new json dict; a keypoint neither in the source nor placeable is a UserError.
    """
    names = _source_names(data, source)
    wanted = list(skeleton.keypoints[: skeleton.num_dataset])
    rules = _plan(names, wanted, skeleton, source)
    sizes = {im["id"]: (im.get("width"), im.get("height")) for im in data["images"] if isinstance(im, dict)}
    annotations = []
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or ann.get("category_id", PERSON_CATEGORY) != PERSON_CATEGORY:
            continue
        src = np.asarray(ann.get("keypoints") or [0] * 3 * len(names), np.float64).reshape(-1, 3)
        if len(src) != len(names):
            raise UserError(f"{source}: annotation {ann.get('id')} has {len(src)} keypoints, its "
                            f"category names {len(names)}")
        out = np.stack([rule(src) for rule in rules]) if rules else np.zeros((0, 3))
        if not ann.get("iscrowd", 0):
            _clip_placed(out, [w not in names for w in wanted], sizes.get(ann.get("image_id")))
        new = {k: v for k, v in ann.items() if not (boxes_only and k in ("segmentation", "area"))}
        new["keypoints"] = [v for x, y, vis in out for v in (round(float(x), 2), round(float(y), 2), int(vis))]
        new["num_keypoints"] = int((out[:, 2] > 0).sum())
        annotations.append(new)
    images = [dict(im) for im in data["images"]]
    if crowd_index:
        by_image = {}
        for ann in annotations:
            if not ann.get("iscrowd", 0):
                by_image.setdefault(ann["image_id"], []).append(ann)
        for im in images:
            people = by_image.get(im.get("id"), [])
            im["crowdIndex"] = round(crowd_index_of([np.reshape(a["keypoints"], (-1, 3)) for a in people],
                                                    [a["bbox"] for a in people]), 4)
    category = {"id": PERSON_CATEGORY, "name": "person", "supercategory": "person", "keypoints": wanted,
                "skeleton": [[a + 1, b + 1] for a, b in skeleton.limbs  # COCO's: 1-based limbs
                             if a < skeleton.num_dataset and b < skeleton.num_dataset]}
    return {**{k: v for k, v in data.items() if k not in ("images", "annotations", "categories")},
            "images": images, "annotations": annotations, "categories": [category]}


def crowd_index_of(keypoints: list, boxes: list) -> float:
    """CrowdPose's crowdIndex of one image: over its people, the mean of (labelled keypoints of
    other people inside the person's box) / (the person's own labelled keypoints).

    Args:
        keypoints: per person [K, 3] (x, y, v), original pixels.
        boxes: per person [x, y, w, h].
    """
    ratios = []
    for i, (k, box) in enumerate(zip(keypoints, boxes)):
        own = int((k[:, 2] > 0).sum())
        if not own:
            continue
        x, y, w, h = box
        inside = 0
        for j, other in enumerate(keypoints):
            if j != i:
                o = other[other[:, 2] > 0]
                inside += int(((o[:, 0] >= x) & (o[:, 0] <= x + w) & (o[:, 1] >= y) & (o[:, 1] <= y + h)).sum())
        ratios.append(inside / own)
    return float(np.mean(ratios)) if ratios else 0.0


# -- internals -----------------------------------------------------------------------------

def _source_names(data, source) -> list:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise UserError(f"{source}: not a COCO annotation file (needs 'images' and 'annotations' lists)")
    cats = [c for c in data.get("categories") or [] if isinstance(c, dict) and c.get("keypoints")]
    person = [c for c in cats if c.get("id") == PERSON_CATEGORY] or cats
    if not person:
        raise UserError(f"{source}: no person category with keypoint names (categories[0].keypoints)")
    return [str(n) for n in person[0]["keypoints"]]


def _plan(names: list, wanted: list, skeleton, source) -> list:
    """One function per wanted keypoint: source keypoints [K_src, 3] -> (x, y, v)."""
    def copy(i):
        return lambda src: src[i]

    def midpoint(a, b):
        def place(src):
            if src[a, 2] > 0 and src[b, 2] > 0:
                return np.array([*(src[a, :2] + src[b, :2]) / 2, min(src[a, 2], src[b, 2])])
            return np.zeros(3)
        return place

    def head(face, shoulders):
        def place(src):
            f = src[face][src[face][:, 2] > 0]
            if not len(f):
                return np.zeros(3)
            centre = f[:, :2].mean(0)
            if shoulders and (src[shoulders, 2] > 0).all():
                centre = centre + 0.5 * (centre - src[shoulders, :2].mean(0))
            return np.array([*centre, 2.0])
        return place

    rules = []
    for name in wanted:
        if name in names:
            rules.append(copy(names.index(name)))
            continue
        needs = SHOULDERS if name == "neck" else FACE if name in HEAD_NAMES else None
        have = [n for n in (needs or ()) if n in names]
        if needs is None or (name == "neck" and len(have) < 2) or not have:
            raise UserError(f"{source}: has no keypoint '{name}' of the skeleton '{skeleton.name}', and it "
                            f"cannot be placed ({', '.join(PLACED)} can be, from COCO's face and shoulders)")
        if name == "neck":
            rules.append(midpoint(names.index(SHOULDERS[0]), names.index(SHOULDERS[1])))
        else:
            shoulders = [names.index(n) for n in SHOULDERS if n in names]
            rules.append(head([names.index(n) for n in have], shoulders if len(shoulders) == 2 else []))
    return rules


def _clip_placed(kpts: np.ndarray, placed: list, size):
    """Move placed, labelled keypoints [K, 3] outside a (width, height) image to its border."""
    width, height = size or (None, None)
    if not width or not height:
        return
    for k, was_placed in zip(kpts, placed):
        if was_placed and k[2] > 0:
            k[0] = min(max(k[0], 0.0), width - 1.0)
            k[1] = min(max(k[1], 0.0), height - 1.0)
