#!/usr/bin/env python
"""Where the data path's CPU time per image goes: reading, decoding, warping, collation, targets.

    python tools/profile_pipeline.py --shards shards/sample-train --json

The training loader (pipelines/loader.py) is a DALI pipeline followed by torch steps. Each is
timed alone on the CPU, in CPU time of the whole process (all DALI threads) per image:
  read      DALI's webdataset reader alone (pipelines.pipeline.read_shards)
  decode    the reader, the JPEG decoder and the mask's PNG decoder; less `read`
  augment   the whole augment pipeline (the random affine, the image and mask warps, the tint
            and normalization, the keypoints' transform); less `read` and `decode`
  collate   finish_keypoints and flag_masks on its outputs: the batch dict of the contract
  targets   render_targets: the target maps of the batch
The pipelines run synchronously here (no prefetch), so each batch's work is counted once; the
loader overlaps them with training, which this does not measure (tools/bench_pipeline.py does).
GPU runs have the same stages, with decode and warps on the device.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from core.errors import ArgumentParser, run_cli  # noqa: E402
from core.skeleton import COCO_SKELETON, load_skeleton  # noqa: E402
from pipelines.config import PipelineConfig  # noqa: E402

STAGES = ("read", "decode", "augment", "collate", "targets")


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True, type=Path, help="shards folder (tools/make_shards.py)")
    p.add_argument("--skeleton", default=str(COCO_SKELETON), help="skeleton yaml the shards were made for")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    p.add_argument("--batches", type=int, default=20, help="timed batches per stage (default 20)")
    p.add_argument("--input-size", type=int, default=512, help="S (default 512)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="DALI threads (default: the cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    for name in ("batch_size", "batches", "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def cpu_ms_per_image(step, batches: int, batch_size: int) -> float:
    """CPU milliseconds per image of `step()` (one batch), after one untimed call."""
    step()
    start = time.process_time()
    for _ in range(batches):
        step()
    return 1e3 * (time.process_time() - start) / (batches * batch_size)


def main(argv=None):
    args = parse_args(argv)
    from nvidia.dali import pipeline_def
    from nvidia.dali.plugin.pytorch import DALIGenericIterator
    from pipelines.batch import finish_keypoints, flag_masks
    from pipelines.loader import make_loader
    from pipelines.pipeline import OUTPUTS, augment_pipeline, decode_image, decode_mask, read_shards
    from pipelines.targets import render_targets

    torch.set_num_threads(1)  # as in the benchmark: DALI's threads are the parallelism
    skeleton = load_skeleton(args.skeleton)
    cfg = PipelineConfig(input_size=args.input_size, batch_size=args.batch_size, num_threads=args.workers)
    with make_loader(args.shards, cfg, skeleton) as loader:  # checks the folder and the skeleton
        paths, index_paths = loader.paths, loader.index_paths
    # synchronous execution: a batch's CPU time is spent inside its run() call
    kw = dict(batch_size=cfg.batch_size, num_threads=cfg.num_threads, device_id=None, seed=1,
              exec_pipelined=False, exec_async=False, prefetch_queue_depth=1)

    @pipeline_def
    def reading():
        return tuple(read_shards(paths, index_paths, cfg, 0, 1, True, 1))

    @pipeline_def
    def decoding():
        jpg, _, mask_png = read_shards(paths, index_paths, cfg, 0, 1, True, 1)
        return decode_image(jpg, gpu=False), decode_mask(mask_png)

    def augmenting(**options):
        return augment_pipeline(paths, index_paths, cfg, skeleton.num_dataset, "cpu", 0, 1, True, 1, **options)

    ms = {}
    for name, pipe in (("read", reading(**kw)), ("decode", decoding(**kw)), ("augment", augmenting(**kw))):
        pipe.build()
        ms[name] = cpu_ms_per_image(pipe.run, args.batches, cfg.batch_size)
    # the torch stages on the augment pipeline's batches, as the loader gets them
    pipe = augmenting(**{k: v for k, v in kw.items() if not k.startswith("exec")})
    pipe.build()
    iterator = DALIGenericIterator([pipe], list(OUTPUTS), size=-1, auto_reset=False)
    raws = [next(iterator)[0] for _ in range(args.batches + 1)]
    batches = iter(raws)

    def collate():
        raw = next(batches)
        keypoints, _ = finish_keypoints(raw["keypoints"], raw["flips"], skeleton, cfg.input_size, cfg.max_people)
        return keypoints, flag_masks(raw["masks"])

    finished = [collate() for _ in range(args.batches + 1)]
    batches = iter(raws)
    ms["collate"] = cpu_ms_per_image(collate, args.batches, cfg.batch_size)
    done = iter(finished)
    ms["targets"] = cpu_ms_per_image(lambda: render_targets(*next(done), skeleton, cfg.targets),
                                     args.batches, cfg.batch_size)
    # each pipeline includes the one before it: keep each stage's own share
    ms["augment"] -= ms["decode"]
    ms["decode"] -= ms["read"]
    total = sum(ms.values())
    summary = {"shards": str(args.shards), "batch_size": cfg.batch_size, "input_size": cfg.input_size,
               "workers": cfg.num_threads, "batches": args.batches,
               "cpu_ms_per_image": {k: round(ms[k], 3) for k in STAGES}, "total_cpu_ms_per_image": round(total, 3)}
    for k in STAGES:
        print(f"{k:8s} {ms[k]:7.2f} ms CPU per image  {100 * ms[k] / total:5.1f}%")
    print(f"{'total':8s} {total:7.2f} ms CPU per image ({cfg.input_size}x{cfg.input_size}, batch {cfg.batch_size}, "
          f"{cfg.num_threads} DALI thread(s))")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    run_cli(main)
