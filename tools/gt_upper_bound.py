"""Upper bound and speed of the grouping: ideal maps from the ground truth -> people -> COCOeval.

    python tools/gt_upper_bound.py --annotations data/sample/annotations/person_keypoints_val2017.json --json
    python tools/gt_upper_bound.py --annotations crowdpose_val.json --skeleton configs/skeletons/crowdpose.yaml

Each image is taken to the inference frame of eval.py (scaled so its height is --height pixels,
512 as in the original's inference), its labelled keypoints are rendered there with the
training target renderer (pipelines.targets, CPU reference, stride 4), the maps are grouped
(grouping.group) and the people written as COCO results and scored by pycocotools' COCOeval on
every image of the file. Only the grouping is timed (milliseconds per image, median and mean,
on the CPU with --threads torch threads, 1 by default: the grouping's tensors are small, extra
threads gain nothing and on a busy machine their synchronization costs tenfold); rendering is
not counted. A perfect grouping scores AP 1.0; what it loses is its own error (and people so
close that their maps merge). The json's keypoints must be --skeleton's (default COCO's); OKS uses
its sigmas, and a ground truth with crowdIndex on every image (CrowdPose) adds AP on its easy,
medium and hard images (evaluation/crowdpose.py).
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json

import numpy as np

from core.errors import ArgumentParser, UserError, run_cli
from core.skeleton import COCO_SKELETON, load_skeleton
from evaluation.coco import (STAT_NAMES, check_ground_truth, evaluate_keypoints, format_table, load_coco,
                             write_results)
from evaluation.crowdpose import crowd_split, format_split


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--annotations", required=True, help="COCO person keypoints json (the ground truth)")
    p.add_argument("--skeleton", default=str(COCO_SKELETON), help="skeleton yaml of the json's keypoints "
                                                                  "(default: COCO's)")
    p.add_argument("--limit", type=int, help="use only the first N images (by image id)")
    p.add_argument("--height", type=int, default=512,
                   help="inference frame height in pixels, as eval.py scales images (default 512)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads while timing (default 1)")
    p.add_argument("--out", type=Path, help="also write the COCO results json here")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be at least 1, got {args.limit}")
    if args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    if args.height < 16:
        p.error(f"--height must be at least 16 pixels, got {args.height}")
    return args


def main(argv=None):
    args = parse_args(argv)
    import torch  # after the arguments are checked: a typo costs no torch import
    from evaluation.ideal import group_ideal_maps
    from grouping import GroupingConfig
    torch.set_num_threads(args.threads)
    skeleton = load_skeleton(args.skeleton)
    coco_gt = load_coco(args.annotations)
    check_ground_truth(coco_gt, skeleton, args.annotations)
    image_ids = sorted(coco_gt.getImgIds())[: args.limit]
    if not image_ids:
        raise UserError(f"{args.annotations}: no images")
    results, seconds = group_ideal_maps(coco_gt, image_ids, skeleton, GroupingConfig(), args.height,
                                        progress=sys.stderr.isatty())
    if args.out:
        write_results(results, args.out)
    stats = evaluate_keypoints(coco_gt, results, image_ids, skeleton.sigmas)
    split = crowd_split(coco_gt, results, image_ids, skeleton.sigmas)
    people = sum(a.get("num_keypoints", 0) > 0 for a in
                 coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=image_ids, iscrowd=False)))
    summary = {"annotations": str(args.annotations), "skeleton": skeleton.name, "images": len(image_ids),
               "people": people,
               "detections": len(results), "height": args.height, "threads": args.threads,
               **{k: round(stats[k], 4) for k in STAT_NAMES}, **split,
               "grouping_ms_median": round(1e3 * float(np.median(seconds)), 3),
               "grouping_ms_mean": round(1e3 * float(np.mean(seconds)), 3)}
    print(format_table(stats))
    if split:
        print(format_split(split))
    print(f"{len(image_ids)} images, {people} labelled people, {len(results)} detections; grouping "
          f"{summary['grouping_ms_median']:.2f} ms/image median, {summary['grouping_ms_mean']:.2f} mean")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    run_cli(main)
