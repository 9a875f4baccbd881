"""Grouping speed on a checkpoint's own maps: peaks, limb pairs and milliseconds per image.

    python tools/bench_grouping.py --weights runs/quickstart/train/last.pt --shards runs/quickstart/shards/val --json

Every image of the shards goes through the network once, in eval.py's frame (core/frame.py,
evaluation/inference.py; scale 1, no flip), and its maps are kept. Then each image's maps are
grouped alone (grouping.group_batch on a batch of one) `--repeat` times; the fastest of the
repeats is the image's time. Printed: median, p90 and mean milliseconds per image, and what
drives them: candidates (peaks above the threshold, at most max_peaks per type) and candidate
limb pairs per image (every pair the limb maps are sampled for), median and maximum. Real maps,
early in training above all, have far more low peaks than ideal ones
(tools/gt_upper_bound.py times the ideal case). CPU, --threads torch threads (default 1, as
eval's grouping runs beside the model).
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from core.errors import ArgumentParser, UserError, run_cli  # noqa: E402


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, type=Path, help="checkpoint (model.checkpoint)")
    p.add_argument("--shards", required=True, type=Path, help="folder of shards (tools/make_shards.py)")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--repeat", type=int, default=3, help="groupings per image; the fastest counts (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    for name in ("limit", "repeat", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be at least 1, got {value}")
    return args


def load(maps, skeleton, cfg, sizes) -> tuple:
    """(candidates, candidate limb pairs) of one image's maps [1, C, h, w]: the grouping's work."""
    import torch
    from grouping import find_peaks
    from grouping.limbs import candidate_pairs
    peaks = find_peaks(maps[:, skeleton.channel_slices()["keypoints"]], cfg.peak_threshold, cfg.nms_window,
                       cfg.refine, sizes, cfg.max_peaks)
    limbs = torch.as_tensor(skeleton.limbs, dtype=torch.long).view(-1, 2)
    return len(peaks), len(candidate_pairs(peaks, limbs, 1, skeleton.num_keypoints)[0])


def main(argv=None):
    args = parse_args(argv)
    import torch
    from tqdm import tqdm
    from evaluation.inference import Preprocess, predict_maps
    from evaluation.sources import ShardSource
    from grouping import GroupingConfig, group_batch
    from model.checkpoint import load_model
    torch.set_num_threads(args.threads)
    model, skeleton, ckpt = load_model(args.weights, "cpu")
    source = ShardSource(args.shards, limit=args.limit, skeleton=skeleton)
    prep = Preprocess.of_checkpoint(ckpt, model.cfg.input_multiple)
    cfg = GroupingConfig()
    progress = sys.stderr.isatty()

    maps = []  # (maps [1, C, h, w], sizes [1, 2]) per image
    for _, image in tqdm(source, total=len(source), desc="maps", unit="img", disable=not progress):
        m = predict_maps(model, [image], prep, skeleton, device="cpu", stride=model.cfg.stride)
        maps.append((m.maps, m.sizes))
    if not maps:
        raise UserError(f"{args.shards}: no images")

    ms, candidates, pairs = [], [], []
    for m, sizes in tqdm(maps, desc="grouping", unit="img", disable=not progress):
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            group_batch(m, skeleton, cfg, model.cfg.stride, sizes)
            times.append(time.perf_counter() - t0)
        ms.append(1e3 * min(times))
        n_peaks, n_pairs = load(m, skeleton, cfg, sizes)
        candidates.append(n_peaks)
        pairs.append(n_pairs)

    ms = np.asarray(ms)
    summary = {"weights": str(args.weights), "shards": str(args.shards), "images": len(ms),
               "threads": args.threads, "repeat": args.repeat,
               "median_ms": round(float(np.median(ms)), 3), "p90_ms": round(float(np.percentile(ms, 90)), 3),
               "mean_ms": round(float(ms.mean()), 3), "max_ms": round(float(ms.max()), 3),
               "candidates_median": int(np.median(candidates)), "candidates_max": int(max(candidates)),
               "pairs_median": int(np.median(pairs)), "pairs_max": int(max(pairs))}
    print(f"grouping {summary['median_ms']:.2f} ms/image median, {summary['p90_ms']:.2f} p90, "
          f"{summary['mean_ms']:.2f} mean over {len(ms)} images; candidates {summary['candidates_median']} "
          f"(max {summary['candidates_max']}), limb pairs {summary['pairs_median']} (max {summary['pairs_max']}) "
          f"per image")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    run_cli(main)
