#!/usr/bin/env python
"""COCO images + person-keypoints json -> WebDataset tar shards with DALI index files.

    python tools/make_shards.py --images data/sample/train2017 \
        --annotations data/sample/annotations/person_keypoints_train2017.json --out shards/sample-train
    python tools/make_shards.py --images crowdpose/images --annotations crowdpose/json/crowdpose_val.json \
        --skeleton configs/skeletons/crowdpose.yaml --out shards/crowdpose-val

The json's keypoints (categories[0].keypoints) must be --skeleton's (default COCO's), by name and
in order; the manifest records the skeleton, and every reader of the shards checks it.

Rerunning the same command finishes an interrupted run: intact shards are kept (sha256 checked
against manifest.json), missing or damaged ones rewritten, the rest packed into new shards.
A training split (name starting with "train") keeps only images with a labelled person unless
--keep-all; any other split keeps every image.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json  # noqa: E402
import os  # noqa: E402

from core.errors import ArgumentParser, run_cli  # noqa: E402
from core.skeleton import COCO_SKELETON, load_skeleton  # noqa: E402
from shards.build import make_shards, summarize  # noqa: E402


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", required=True, help="folder of the split's images (COCO layout)")
    p.add_argument("--annotations", required=True, help="COCO person_keypoints json of the split")
    p.add_argument("--out", required=True, help="output folder for shards, index files and manifest.json")
    p.add_argument("--skeleton", default=str(COCO_SKELETON),
                   help="skeleton yaml whose keypoints the json holds (default: COCO's)")
    p.add_argument("--split", help="shard name prefix (default: the images folder's name without the year)")
    p.add_argument("--shard-size", type=float, default=1024.0, help="upper bound of one shard, MB (default 1024)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="worker processes (default: the cores)")
    p.add_argument("--keep-all", action="store_true", help="keep images without labelled people in a train split")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    args = p.parse_args(argv)
    manifest = make_shards(args.images, args.annotations, args.out, split=args.split,
                           shard_size_mb=args.shard_size, workers=args.workers,
                           keep_all=True if args.keep_all else None, skeleton=load_skeleton(args.skeleton))
    s = summarize(manifest)
    print(f"{s['samples']} samples in {s['shards']} shard(s), {s['bytes'] / 2**20:.1f} MiB -> {args.out}")
    if s["skipped"]:
        print(f"{s['skipped']} image(s) skipped, reasons in {Path(args.out) / 'manifest.json'}", file=sys.stderr)
    if args.json:
        print(json.dumps(s))


if __name__ == "__main__":
    run_cli(main)
