"""Read shards back on the CPU with webdataset (eval, tools, tests; training uses DALI).

    for s in iter_samples("shards/val"):
        s["key"], s["image_id"], s["jpg"] (bytes), s["kpts"] (float32 [P, K, 3], original pixels),
        s["mask"] (uint8 [H, W] bit flags PERSON=1, IGNORE=2), s["meta"] (the sample's json)
"""
import json
from pathlib import Path

import cv2
import numpy as np
import webdataset as wds

from core.errors import UserError
from shards.writer import MANIFEST


def read_manifest_strict(shards_dir) -> dict:
    """The manifest of a shards folder; a folder without one is a UserError."""
    path = Path(shards_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"{shards_dir}: no {MANIFEST} here; is it a folder made by tools/make_shards.py?")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path}: not valid json ({e})") from None


def check_skeleton(manifest: dict, shards_dir, skeleton):
    """A UserError when the shards were made for other keypoints than `skeleton`'s.

    Shards hold the dataset's keypoints only, so that is what must agree: their names, in order,
    as make_shards checked them against its --skeleton (the manifest's `skeleton` records which).
    Another skeleton over the same keypoints (other limbs, say) reads them. A manifest without
    that record (older, or written by hand) is checked by the keypoint count alone.
    """
    names = manifest.get("keypoint_names")
    if names is None:
        return
    made_for = manifest.get("skeleton")
    if made_for:
        skeleton.check_keypoint_names(names, f"{shards_dir} (shards made for skeleton '{made_for.get('name')}')")
    elif len(names) != skeleton.num_dataset:
        raise UserError(f"{shards_dir}: shards hold {len(names)} keypoints per person, the skeleton "
                        f"'{skeleton.name}' has {skeleton.num_dataset}")


def shard_paths(shards_dir) -> list:
    """The tar files the manifest lists, in order."""
    manifest = read_manifest_strict(shards_dir)
    paths = [Path(shards_dir) / s["name"] for s in manifest["shards"]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"{shards_dir}: shard(s) listed in the manifest are missing: {', '.join(missing[:3])}")
    return paths


def decode_sample(raw: dict) -> dict:
    """webdataset's raw dict (bytes per component) -> the decoded sample described above."""
    meta = json.loads(raw["json"])
    kpts = np.frombuffer(raw["kpts"], "<f4").reshape(meta["keypoints_shape"])
    mask = cv2.imdecode(np.frombuffer(raw["mask.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    return {"key": raw["__key__"], "image_id": meta["image_id"], "jpg": raw["jpg"], "kpts": kpts,
            "mask": mask, "meta": meta}


def iter_samples(shards_dir):
    """Every sample of a shards folder, in shard order (image-id order)."""
    urls = [str(p) for p in shard_paths(shards_dir)]
    if not urls:
        return
    # every caller reads the whole folder; without an explicit splitter webdataset refuses to
    # run inside a torch.distributed process group
    for raw in wds.WebDataset(urls, shardshuffle=False, empty_check=False, nodesplitter=lambda u: u):
        yield decode_sample(raw)
