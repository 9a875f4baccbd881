#!/usr/bin/env python
"""Draw what the training pipeline produces, so a person can check the targets by eye.

    python tools/show_targets.py --shards shards/sample-train --out runs/targets --count 8

Writes one PNG sheet per sample, `sample-000.png`, ...: the augmented input with its keypoints
and limbs drawn (left side green, right side red, centre yellow), the keypoint heatmaps (their
maximum) and the limb maps (their maximum) over the image, and the masks (red: ignored by the
loss, blue: person mask channel of the targets).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json  # noqa: E402
import os  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from core.config import from_dict, load_yaml  # noqa: E402
from core.errors import ArgumentParser, UserError, run_cli  # noqa: E402
from core.skeleton import COCO_SKELETON, load_skeleton  # noqa: E402
from pipelines.config import PipelineConfig  # noqa: E402
from pipelines.loader import make_loader  # noqa: E402


def side_colour(name: str):
    """BGR colour of a keypoint by its side: left green, right red, centre yellow."""
    if name.startswith("left"):
        return (60, 200, 60)
    if name.startswith("right"):
        return (60, 60, 230)
    return (40, 220, 230)


def to_bgr(image, cfg) -> np.ndarray:
    """[3, S, S] normalized tensor -> [S, S, 3] uint8 BGR."""
    rgb = image.float().cpu().permute(1, 2, 0).numpy() * np.array(cfg.std) + np.array(cfg.mean)
    return np.ascontiguousarray(np.clip(rgb, 0, 255).astype(np.uint8)[..., ::-1])


def overlay(bgr, heat, alpha=0.6) -> np.ndarray:
    """Blend a [h, w] map in 0..1 (any resolution) over a BGR image, coloured where it is > 0."""
    heat = cv2.resize(heat, bgr.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    a = (alpha * np.clip(heat * 4, 0, 1))[..., None]
    return (bgr * (1 - a) + colour * a).astype(np.uint8)


def draw_people(bgr, keypoints, skeleton) -> np.ndarray:
    """Keypoints [P, K', 3] (input pixels) and their limbs on a copy of the image."""
    out = bgr.copy()
    for person in keypoints:
        for a, b in skeleton.limbs:
            if person[a, 2] > 0 and person[b, 2] > 0:
                cv2.line(out, tuple(np.round(person[a, :2]).astype(int)), tuple(np.round(person[b, :2]).astype(int)),
                         side_colour(skeleton.keypoints[b]), 1, cv2.LINE_AA)
        for k, (x, y, v) in enumerate(person):
            if v > 0:
                cv2.circle(out, (int(round(x)), int(round(y))), 3, side_colour(skeleton.keypoints[k]), -1, cv2.LINE_AA)
    return out


def sheet(batch, i, skeleton, cfg) -> np.ndarray:
    """The four panels of sample i of a batch, side by side, with titles."""
    bgr = to_bgr(batch["images"][i], cfg)
    t = batch["targets"][i].float().cpu().numpy()
    masks = batch["masks"][i].cpu().numpy()
    sl = skeleton.channel_slices()
    mask_view = bgr.copy()
    small = np.zeros(masks.shape[1:] + (3,), np.float32)
    small[..., 2] = 1 - masks[0]                  # red: ignored
    small[..., 0] = t[sl["person_mask"]]          # blue: person mask target
    big = cv2.resize(small, bgr.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    mask_view = (mask_view * (1 - 0.5 * big.max(-1, keepdims=True)) + 0.5 * 255 * big).astype(np.uint8)
    panels = [("keypoints", draw_people(bgr, batch["keypoints"][i].cpu().numpy(), skeleton)),
              ("keypoint heatmaps", overlay(bgr, t[sl["keypoints"]].max(0))),
              ("limb maps", overlay(bgr, t[sl["limbs"]].max(0) if t[sl["limbs"]].size else t[0] * 0)),
              ("masks: red ignore, blue person", mask_view)]
    for title, p in panels:
        cv2.putText(p, title, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([p for _, p in panels], axis=1)


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shards", required=True, help="shards folder (tools/make_shards.py)")
    p.add_argument("--out", required=True, help="folder for the PNG sheets")
    p.add_argument("--count", type=int, default=8, help="samples to draw (default 8)")
    p.add_argument("--config", help="pipeline yaml (configs/pipeline/coco.yaml); default: the defaults")
    p.add_argument("--skeleton", default=str(COCO_SKELETON), help="skeleton yaml the shards were made for "
                                                                  "(default: COCO's)")
    p.add_argument("--seed", type=int, default=0, help="augmentation seed (default 0)")
    p.add_argument("--no-augment", action="store_true", help="show the un-augmented (fitted) images")
    p.add_argument("--json", action="store_true", help="print the written files as one JSON line")
    args = p.parse_args(argv)
    if args.count < 1:
        raise UserError(f"--count must be at least 1, got {args.count}")
    data = load_yaml(args.config) if args.config else {}
    cfg = from_dict(PipelineConfig, {**data, "seed": args.seed,
                                     "batch_size": min(args.count, data.get("batch_size", 8))},
                    args.config or "pipeline")
    skeleton = load_skeleton(args.skeleton)
    out = Path(args.out)
    written = []
    with make_loader(args.shards, cfg, skeleton, train=not args.no_augment) as loader:
        out.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=args.count, unit="sheet", desc="show_targets")
        while len(written) < args.count:
            for batch in loader:
                for i in range(batch["images"].shape[0]):
                    if len(written) == args.count:
                        break
                    path = out / f"sample-{len(written):03d}.png"
                    tmp = path.with_name(path.stem + ".tmp.png")  # whole files only under final names
                    if not cv2.imwrite(str(tmp), sheet(batch, i, skeleton, cfg)):
                        raise UserError(f"{tmp}: could not write the image")
                    os.replace(tmp, path)
                    written.append(str(path))
                    bar.update()
                if len(written) == args.count:
                    break
        bar.close()
    print(f"{len(written)} sheet(s) in {out}")
    if args.json:
        print(json.dumps({"sheets": written}))


if __name__ == "__main__":
    run_cli(main)
