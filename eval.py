"""COCO keypoint evaluation of a checkpoint: images -> maps -> grouping -> results json -> COCOeval.

    python eval.py --weights runs/coco/last.pt --images data/sample/val2017 \
        --annotations data/sample/annotations/person_keypoints_val2017.json --flip --json
    python eval.py --weights runs/coco/last.pt --shards shards/val --device cuda --batch-size 16
    python eval.py --weights runs/coco/last.pt --shards shards/val --flip --scales 0.5 1 1.5 2
    python eval.py --weights runs/crowdpose/last.pt --skeleton configs/skeletons/crowdpose.yaml \
        --images crowdpose/images --annotations crowdpose/json/crowdpose_test.json

Each image is scaled so its height is the checkpoint's input_size (512 for COCO: the original's
inference rule; core/frame.py, the frame training's validation and `center: frame` use too),
padded into batches (evaluation/inference.py), run through the network (CUDA:
bfloat16 autocast), optionally with the flip test and several scales averaged, grouped into
people (grouping/) and written as COCO results: --out, by default `<weights>.results.json`
beside the weights (replaced atomically on every run). COCOeval scores every image that was
run (not only the first 500, as the original did); images the json lists but the folder lacks
are skipped and counted. With --shards the ground truth is the json the shards were made from
when it is on this machine, else it is rebuilt from the shards (evaluation/sources.py).

--skeleton (default COCO's) names the keypoints: the checkpoint, the shards and the json must all
be for them (else one line, exit 2), and OKS uses its sigmas. A ground truth with crowdIndex on
every image (CrowdPose) also gets AP on its easy, medium and hard images (evaluation/crowdpose.py).

Prints the ten COCO numbers, the time of each stage (model: resize, normalize, network, flip and
scale averaging; grouping) and images/s; --json adds one JSON object as the last line.
"""
import json
from pathlib import Path

from core.errors import ArgumentParser, UserError, run_cli
from core.skeleton import COCO_SKELETON


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, type=Path, help="checkpoint (model.checkpoint)")
    p.add_argument("--shards", type=Path, help="folder of shards (tools/make_shards.py)")
    p.add_argument("--images", type=Path, help="folder of images (with --annotations)")
    p.add_argument("--annotations", type=Path, help="COCO person keypoints json (ground truth)")
    p.add_argument("--skeleton", default=str(COCO_SKELETON),
                   help="skeleton yaml the weights, shards and json must be for (default: COCO's)")
    p.add_argument("--flip", action="store_true", help="average with the mirrored image's maps")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0],
                   help="multipliers of the input height, maps averaged (default 1; the original "
                        "searched 0.5 1 1.5 2 3)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when there is a GPU (default)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--out", type=Path, help="results json (default: <weights>.results.json)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    if (args.shards is None) == (args.images is None):
        p.error("give either --shards DIR or --images DIR --annotations FILE")
    if args.images is not None and args.annotations is None:
        p.error("--images needs --annotations FILE (the ground truth)")
    if args.batch_size < 1:
        p.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be at least 1, got {args.limit}")
    if any(s <= 0 for s in args.scales):
        p.error(f"--scales must be positive, got {args.scales}")
    if args.out is None:
        args.out = args.weights.with_name(args.weights.name + ".results.json")
    return args


def main(argv=None):
    args = parse_args(argv)
    # heavy imports after the arguments are checked: a typo costs no torch import
    from evaluation.coco import STAT_NAMES, evaluate_keypoints, format_table, write_results
    from core.device import resolve_device
    from core.skeleton import load_skeleton
    from evaluation.crowdpose import crowd_split, format_split
    from evaluation.inference import Preprocess
    from evaluation.runner import run_model
    from evaluation.sources import FolderSource, ShardSource
    from grouping import GroupingConfig
    from model.checkpoint import load_model
    args.device = resolve_device(args.device)
    # a checkpoint, shards or json of another skeleton than --skeleton: one line
    model, skeleton, ckpt = load_model(args.weights, args.device, skeleton=load_skeleton(args.skeleton))
    if args.shards is not None:
        source = ShardSource(args.shards, args.annotations, args.limit, skeleton=skeleton)
    else:
        source = FolderSource(args.images, args.annotations, args.limit, skeleton=skeleton)
    # the frame the model was trained in (training's validation uses the same one)
    prep = Preprocess.of_checkpoint(ckpt, model.cfg.input_multiple)

    run = run_model(model, source, skeleton, prep, GroupingConfig(), args.scales, args.flip,
                    args.device, args.batch_size, model.cfg.stride)
    if not run.image_ids:
        raise UserError("no images to evaluate" + (f" ({len(source.missing)} listed images are missing "
                                                   f"from {args.images})" if source.missing else ""))

    results, n = run.results, len(run.image_ids)
    write_results(results, args.out)
    ground_truth = source.ground_truth()
    stats = evaluate_keypoints(ground_truth, results, run.image_ids, skeleton.sigmas)
    split = crowd_split(ground_truth, results, run.image_ids, skeleton.sigmas)  # {} unless CrowdPose
    summary = {"weights": str(args.weights), "skeleton": skeleton.name, "images": n,
               "missing_images": len(source.missing),
               "detections": len(results), "flip": args.flip, "scales": args.scales,
               "device": args.device, "batch_size": args.batch_size, "results": str(args.out),
               **{k: round(stats[k], 4) for k in STAT_NAMES}, **split,
               "model_ms_per_image": round(1e3 * run.model_s / n, 2),
               "grouping_ms_per_image": round(1e3 * run.grouping_s / n, 2),
               "images_per_s": round(n / run.wall_s, 2)}
    print(format_table(stats))
    if split:
        print(format_split(split))
    print(f"{n} images ({len(source.missing)} missing), {len(results)} detections -> {args.out}")
    print(f"model {summary['model_ms_per_image']:.1f} ms/image, grouping "
          f"{summary['grouping_ms_per_image']:.2f} ms/image, {summary['images_per_s']:.2f} images/s overall")
    if source.missing:
        print(f"missing: {len(source.missing)} images listed in the annotations are not in "
              f"{args.images} (e.g. {source.missing[0]}); evaluated without them")
    if source.note:
        print(f"note: {source.note}")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    run_cli(main)
