"""Where eval.py's images and ground truth come from: a folder + COCO json, or shards.

    source = FolderSource(images_dir, annotations_json, skeleton=skeleton)   # or ShardSource(shards_dir, ...)
    for image_id, rgb in source: ...                     # RGB uint8 [H, W, 3]
    coco_gt = source.ground_truth()                      # after the loop
    source.missing                                       # file names not found (folder only)

Shards: the ground truth is the COCO json the shards were made from (the manifest's
source.annotations, or --annotations), which keeps crowd regions, so detections there are not
counted as false positives. When that file is not on this machine, it is rebuilt from the
samples' own keypoints and person boxes (`gt_from_samples`); crowd regions are not stored in
shards, so that ground truth has none (`source.note` says so); each image's crowdIndex
(CrowdPose) survives in the shards and in it. Shards hold only the images with labelled people
(tools/make_shards.py's default), and every image evaluated is one that was run.

With a `skeleton`, a json whose keypoints are not the skeleton's and shards made for other
keypoints are UserErrors, before any image is read (the json the shards were made from was
checked by make_shards; one given with `annotations` is checked here).
"""
from pathlib import Path

import cv2
import numpy as np

from core.errors import UserError
from evaluation.coco import PERSON_CATEGORY, check_ground_truth, coco_from_dict, load_coco


def decode_rgb(data: bytes, name: str) -> np.ndarray:
    """Image file bytes -> RGB uint8 [H, W, 3]; an undecodable file is a UserError naming it."""
    im = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if im is None:
        raise UserError(f"{name}: not a readable image (corrupt, or not jpeg/png)")
    return cv2.cvtColor(im, cv2.COLOR_BGR2RGB)


def read_bgr(path) -> np.ndarray:
    """An image file -> BGR uint8 [H, W, 3] (cv2's order, for drawing); a missing or undecodable
    file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such image")
    im = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if im is None:
        raise UserError(f"{path}: not a readable image (corrupt, or not an image format cv2 reads)")
    return im


class FolderSource:
    """The images a COCO json lists, read from a folder; those not in it are counted as missing."""

    def __init__(self, images_dir, annotations, limit=None, skeleton=None):
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise UserError(f"{images_dir}: no such images folder")
        self.coco = load_coco(annotations)
        if skeleton is not None:
            check_ground_truth(self.coco, skeleton, annotations)
        ids = sorted(self.coco.getImgIds())[:limit]
        self.paths, self.missing = {}, []
        for i in ids:
            name = self.coco.loadImgs(i)[0].get("file_name", f"{i:012d}.jpg")
            path = self.images_dir / name
            if path.is_file():
                self.paths[i] = path
            else:
                self.missing.append(name)
        self.note = ""

    def __len__(self):
        return len(self.paths)

    def __iter__(self):
        for image_id, path in self.paths.items():
            yield image_id, decode_rgb(path.read_bytes(), str(path))

    def ground_truth(self):
        return self.coco


class ShardSource:
    """The samples of a shards folder (shards/reader.py) and their ground truth (see module).

    With `limit` only the first `limit` samples (shard order) count. With rank / world_size
    this process yields only its share of them: sample n goes to rank n % world_size (several
    processes evaluating one set, training's validation). `skeleton`, when given, must be the
    one the shards were made for. Missing, empty or foreign shards are UserErrors here, before
    any image is read.
    """

    def __init__(self, shards_dir, annotations=None, limit=None, rank=0, world_size=1, skeleton=None):
        from shards.reader import check_skeleton, read_manifest_strict
        self.shards_dir = Path(shards_dir)
        if not self.shards_dir.is_dir():
            raise UserError(f"{shards_dir}: shards folder not found")
        manifest = read_manifest_strict(shards_dir)
        if skeleton is not None:
            check_skeleton(manifest, shards_dir, skeleton)
        self.rank, self.world_size = rank, world_size
        self.missing = []
        self.samples = {}  # image_id -> (kpts [P, K, 3], meta): for a rebuilt ground truth
        source = annotations or (manifest.get("source") or {}).get("annotations")
        self.annotations = Path(source) if source and Path(source).is_file() else None
        if annotations and self.annotations is None:
            raise UserError(f"{annotations}: no such annotations file")
        self._gt = None
        if annotations and skeleton is not None:  # another json than the shards': read it now
            self._gt = load_coco(annotations)
            check_ground_truth(self._gt, skeleton, annotations)
        self.note = "" if self.annotations else (
            f"ground truth rebuilt from the shards ({source or 'no source json'} is not here): "
            f"crowd regions are not counted")
        self.total = sum(s["samples"] for s in manifest.get("shards", []))
        if not self.total:
            raise UserError(f"{shards_dir}: the shards hold no samples")
        if limit is not None:
            self.total = min(self.total, limit)

    def __len__(self):
        """Samples this rank yields."""
        return len(range(self.rank, self.total, self.world_size))

    def __iter__(self):
        from shards.reader import iter_samples
        for n, s in enumerate(iter_samples(self.shards_dir)):
            if n >= self.total:
                return
            if n % self.world_size != self.rank:
                continue
            self.samples[s["image_id"]] = (s["kpts"], s["meta"])
            yield s["image_id"], decode_rgb(s["jpg"], f"{self.shards_dir}/{s['key']}.jpg")

    def ground_truth(self):
        if self._gt is not None:
            return self._gt
        if self.annotations:
            return load_coco(self.annotations)
        return gt_from_samples(self.samples)


def gt_from_samples(samples: dict):
    """COCO ground truth from shard samples {image_id: (kpts [P, K, 3], meta)} (no crowds; the
    images' crowdIndex where the shards have it)."""
    images, anns = [], []
    for image_id, (kpts, meta) in samples.items():
        image = {"id": image_id, "file_name": meta.get("file_name", ""),
                 "width": meta["width"], "height": meta["height"]}
        if "crowdIndex" in meta:
            image["crowdIndex"] = meta["crowdIndex"]
        images.append(image)
        for k, person in zip(kpts, meta["persons"]):
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": PERSON_CATEGORY,
                         "keypoints": [float(v) for v in np.asarray(k).reshape(-1)],
                         "num_keypoints": int(person["num_keypoints"]), "bbox": person["bbox"],
                         "area": person["area"], "iscrowd": 0})
    return coco_from_dict({"images": images, "annotations": anns,
                           "categories": [{"id": PERSON_CATEGORY, "name": "person"}]})
