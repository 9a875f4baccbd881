#!/usr/bin/env python
"""Throughput of make_shards with 1 and with N workers, side by side in one run; prints JSON.

    python tools/bench_shards.py --images data/sample/train2017 \
        --annotations data/sample/annotations/person_keypoints_train2017.json --workers 1 2

Each setting builds the same shards into a fresh temporary folder `--repeat` times and keeps the
fastest run; the estimate scales the measured rate and bytes per image to `--estimate-images`
(COCO train2017 has about 64k images with people).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from core.errors import ArgumentParser, run_cli  # noqa: E402
from shards.build import make_shards, summarize  # noqa: E402


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", required=True)
    p.add_argument("--annotations", required=True)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--estimate-images", type=int, default=64115)
    args = p.parse_args(argv)
    result = {"images": args.images, "runs": []}
    for w in args.workers:
        best = None
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as out:
                t = time.perf_counter()
                s = summarize(make_shards(args.images, args.annotations, out, workers=w, progress=False))
                dt = time.perf_counter() - t
            best = dt if best is None else min(best, dt)
        n = s["samples"] + s["skipped"]
        rate = n / best
        result["runs"].append({
            "workers": w, "images": n, "seconds": round(best, 3), "images_per_s": round(rate, 1),
            "shard_bytes_per_image": round(s["bytes"] / max(s["samples"], 1)),
            "estimate_hours": round(args.estimate_images / rate / 3600, 2),
            "estimate_gib": round(args.estimate_images * s["bytes"] / max(s["samples"], 1) / 2**30, 1)})
    base = result["runs"][0]["images_per_s"]
    for r in result["runs"]:
        r["speedup_vs_first"] = round(r["images_per_s"] / base, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    run_cli(main)
