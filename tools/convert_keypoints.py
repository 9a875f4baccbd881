#!/usr/bin/env python
"""A COCO-style keypoints json -> the same people with another skeleton's keypoints.

    python tools/convert_keypoints.py --annotations data/sample/annotations/person_keypoints_val2017.json \
        --skeleton runs/upper/upper_body.yaml --out runs/upper/val.json
    python tools/convert_keypoints.py --annotations ... --skeleton configs/skeletons/crowdpose.yaml \
        --out crowdpose-like.json --boxes-only --crowd-index

Keypoints the json has are kept by name; neck, head and head_top are placed from the face and
shoulders when the json lacks them (shards/keypoint_sets.py says how); any other missing keypoint
is an error (one line, exit 2). --boxes-only drops segmentations and areas (CrowdPose and AI
Challenger have none); --crowd-index adds CrowdPose's crowdIndex to every image. The output is
written under a temporary name and renamed.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json  # noqa: E402

from core.errors import ArgumentParser, UserError, run_cli  # noqa: E402
from core.files import read_json, write_text_atomic  # noqa: E402
from core.skeleton import load_skeleton  # noqa: E402
from shards.keypoint_sets import convert  # noqa: E402


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--annotations", required=True, type=Path, help="source COCO-style keypoints json")
    p.add_argument("--skeleton", required=True, help="skeleton yaml whose keypoints the output holds")
    p.add_argument("--out", required=True, type=Path, help="output json")
    p.add_argument("--boxes-only", action="store_true", help="drop segmentations and areas")
    p.add_argument("--crowd-index", action="store_true", help="add CrowdPose's crowdIndex to every image")
    args = p.parse_args(argv)
    skeleton = load_skeleton(args.skeleton)
    data = read_json(args.annotations, "annotations file")
    out = convert(data, skeleton, str(args.annotations), args.boxes_only, args.crowd_index)
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{args.out.parent}: cannot make this folder for --out ({e.strerror})") from None
    write_text_atomic(args.out, json.dumps(out))
    people = sum(1 for a in out["annotations"] if a["num_keypoints"] > 0)
    print(f"{len(out['images'])} images, {people} people with keypoints, skeleton '{skeleton.name}' -> {args.out}")


if __name__ == "__main__":
    run_cli(main)
