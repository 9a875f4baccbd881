"""One COCO image with its person annotations -> one shard sample (pure functions).

Sample components (ARCHITECTURE.md, "A sample in a shard"):
    jpg       the image file's bytes, never re-encoded
    kpts      raw little-endian float32 [P, K, 3] (x, y, v) in original pixels; P = people with at
              least one labelled keypoint, in annotation order
    mask.png  uint8 [H, W] bit flags: PERSON (1) inside some person's segmentation, crowds included;
              IGNORE (2) the loss ignores the pixel (crowd regions, people without labelled keypoints)
    json      image_id, file_name, width, height, keypoints_shape [P, K, 3], persons [{bbox, area,
              num_keypoints}] in the order of kpts (area null where the json gives none), and the
              image's crowdIndex when the json has one (CrowdPose: eval's easy/medium/hard split)

Annotations without a segmentation (CrowdPose, AI Challenger: boxes and keypoints only) count
with their box as their region: the box is all such a json says of a person's extent. For the
IGNORE flag (crowds, unlabelled people) a box that ignores too much only loses some supervision,
while ignoring too little would teach the network that an unlabelled person is background. For
the PERSON flag a box overstates the person, but that only feeds the person-mask channel, an
auxiliary target the grouping never reads.
"""
import json
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from core.errors import UserError

PERSON, IGNORE = 1, 2
_REQUIRED = ("keypoints", "bbox")


def load_annotations(path) -> dict:
    """Read a COCO person-keypoints json -> {"keypoint_names", "images": [(image, [anns])]}.

    Images are sorted by id, each with its person annotations (category 1) in file order.
    A missing or unparsable file, or one that is not COCO keypoints, is a UserError.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: annotation file not found")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid json ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise UserError(f"{path}: not a COCO annotation file (needs 'images' and 'annotations' lists)")
    person = [c for c in data.get("categories", []) if c.get("id") == 1 and c.get("keypoints")]
    if not person:
        raise UserError(f"{path}: no person category (id 1) with keypoint names; is it a person_keypoints file?")
    by_image = {}
    for ann in data["annotations"]:
        if isinstance(ann, dict) and ann.get("category_id", 1) == 1 and "image_id" in ann:
            by_image.setdefault(ann["image_id"], []).append(ann)
    images = sorted((im for im in data["images"] if isinstance(im, dict) and "id" in im and "file_name" in im),
                    key=lambda im: im["id"])
    return {"keypoint_names": list(person[0]["keypoints"]),
            "images": [(im, by_image.get(im["id"], [])) for im in images]}


def has_labelled_person(anns) -> bool:
    """True if some non-crowd annotation has a labelled keypoint (the training-split filter)."""
    return any(not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0 for a in anns)


def image_format(data: bytes) -> str:
    """'jpeg', 'png', or 'unknown', by the file's content (not its name)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return "unknown"


def is_truncated(data: bytes, fmt: str) -> bool:
    """A jpeg without its end-of-image marker, a png without its IEND chunk.

    cv2 decodes truncated jpegs with a warning and grey rows, so decoding alone cannot tell.
    """
    if fmt == "jpeg":
        return b"\xff\xd9" not in data[-1024:]
    if fmt == "png":
        return b"IEND" not in data[-32:]
    return False


def build_sample(image: dict, anns: list, image_bytes: bytes, num_keypoints: int):
    """Build the components of one sample.

    Args:
        image: the COCO image record (id, file_name, width, height).
        anns: its person annotations.
        image_bytes: the image file's content.
        num_keypoints: K, the dataset's keypoints per person.
    Returns:
        (components {"jpg", "kpts", "mask.png", "json"} as bytes, report) where report is
        {"skip": reason or None, "notes": [str], "counts": {name: int}}.
    """
    counts = {}
    notes = []

    def count(name, n=1):
        counts[name] = counts.get(name, 0) + n

    fmt = image_format(image_bytes)
    if is_truncated(image_bytes, fmt):
        return None, {"skip": f"truncated {fmt} file", "notes": [], "counts": counts}
    decoded = cv2.imdecode(np.frombuffer(image_bytes, np.uint8), cv2.IMREAD_UNCHANGED) if fmt != "unknown" else None
    if decoded is None:
        return None, {"skip": "not a decodable image (corrupt, or not jpeg/png)", "notes": [], "counts": counts}
    if Path(image["file_name"]).suffix.lower().lstrip(".") not in {"jpeg": ("jpg", "jpeg"), "png": ("png",)}[fmt]:
        notes.append(f"content is {fmt}, the name says otherwise; kept (decoders read the content)")
        count("format_mismatch")
    h, w = decoded.shape[:2]
    if (image.get("width"), image.get("height")) != (w, h):
        notes.append(f"json size {image.get('width')}x{image.get('height')} != decoded {w}x{h}; decoded size used")
        count("size_mismatch")

    person_mask = np.zeros((h, w), bool)
    ignore_mask = np.zeros((h, w), bool)
    kpts, persons = [], []
    for ann in anns:
        if any(k not in ann for k in _REQUIRED) or len(ann["keypoints"]) != 3 * num_keypoints:
            count("annotations_missing_fields")
            continue
        seg = _region(ann, h, w)
        if seg is None:
            count("annotations_bad_segmentation")
            continue
        person_mask |= seg
        if ann.get("iscrowd", 0):
            ignore_mask |= seg
            count("crowd_regions")
            continue
        k = np.asarray(ann["keypoints"], np.float32).reshape(num_keypoints, 3)
        outside = (k[:, 2] > 0) & ((k[:, 0] < 0) | (k[:, 1] < 0) | (k[:, 0] >= w) | (k[:, 1] >= h))
        if outside.any():
            count("keypoints_outside_image", int(outside.sum()))
            k[outside] = 0  # unlabelled: COCO marks those (0, 0, 0)
        if not (k[:, 2] > 0).any():
            ignore_mask |= seg  # a person nobody labelled: neither a positive nor a negative example
            count("people_without_keypoints")
            continue
        kpts.append(k)
        area = ann.get("area")  # none in CrowdPose: evaluation.coco fills it the way CrowdPose scores
        persons.append({"bbox": [float(v) for v in ann["bbox"]], "area": None if area is None else float(area),
                        "num_keypoints": int((k[:, 2] > 0).sum())})
        count("people")

    kpts = np.stack(kpts) if kpts else np.zeros((0, num_keypoints, 3), np.float32)
    flags = (person_mask * PERSON | ignore_mask * IGNORE).astype(np.uint8)
    # zlib level 3 with libpng's adaptive row filters, not OpenCV's default (level 1, run-length
    # only): 2 KB more per image, and the loader decodes it in a third of the time (0.5 against
    # 1.5 ms of CPU per image on 2 cores: a sixth of the whole data path, BENCHMARKS.md)
    ok, png = cv2.imencode(".png", flags, [cv2.IMWRITE_PNG_COMPRESSION, 3,
                                           cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_DEFAULT])
    assert ok, "cv2 failed to encode a uint8 mask as png"
    meta = {"image_id": image["id"], "file_name": image["file_name"], "width": w, "height": h,
            "keypoints_shape": list(kpts.shape), "persons": persons}
    if isinstance(image.get("crowdIndex"), (int, float)):
        meta["crowdIndex"] = float(image["crowdIndex"])
    components = {"jpg": image_bytes, "kpts": kpts.astype("<f4").tobytes(), "mask.png": png.tobytes(),
                  "json": json.dumps(meta).encode()}
    return components, {"skip": None, "notes": notes, "counts": counts}


def _region(ann, h, w):
    """bool [h, w]: an annotation's segmentation, or its box where it has none (see the module)."""
    if ann.get("segmentation") is None:
        try:  # pycocotools rasterizes the box as COCO does its boxes
            rle = mask_utils.frPyObjects(np.asarray([ann["bbox"]], np.float64).reshape(1, 4), h, w)[0]
        except (TypeError, ValueError):
            return None
        return mask_utils.decode(rle).astype(bool)
    return _decode_segmentation(ann["segmentation"], h, w)


def _decode_segmentation(seg, h, w):
    """COCO polygons, RLE or uncompressed RLE -> bool [h, w]; None if it cannot be decoded."""
    try:
        if isinstance(seg, list):
            polys = [p for p in seg if isinstance(p, list) and len(p) >= 6]
            if not polys:
                return np.zeros((h, w), bool)
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, h, w)  # uncompressed RLE (crowds)
        elif isinstance(seg, dict):
            rle = dict(seg)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode()
        else:
            return None
        m = mask_utils.decode(rle)
    except Exception:
        return None
    if m.shape[:2] != (h, w):  # an RLE made for a size the image does not have
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
    return m.astype(bool)
