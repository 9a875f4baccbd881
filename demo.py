#!/usr/bin/env python
"""Draw the people a trained model finds on images, a folder, a video or a webcam.

    python demo.py --weights runs/quickstart/train/checkpoint.pt --input data/sample/val2017/000000214753.jpg \
        --output demo.jpg --json

Input: an image file, a folder of images, a video file (.mp4 .avi .mov .mkv .webm) or a webcam
index (0, 1, ...). Output (default: beside the current folder, named after the input): the
picture, a folder of pictures, or an .mp4 with the frame rate reached written on each frame.
With --json, the people found are also written next to it (<output>.json: per image or frame,
COCO's keypoints with scores, a box and the person score) and a summary JSON object is printed
as the last line. Each person is drawn in its own colour; a keypoint's disc grows and brightens
with its confidence.
"""
import colorsys
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np

from core.errors import ArgumentParser, UserError, run_cli
from core.files import write_text_atomic
from core.skeleton import COCO_SKELETON

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}


def parse_args(argv):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, help="checkpoint from train_ddp.py")
    p.add_argument("--input", required=True, help="image, folder of images, video file, or webcam index")
    p.add_argument("--output", help="picture / folder / .mp4 to write (default: named after the input)")
    p.add_argument("--json", action="store_true", help="also write the people found as <output>.json")
    p.add_argument("--skeleton", default=str(COCO_SKELETON), help="keypoint set the weights must be for")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="multi-scale averaging")
    p.add_argument("--threshold", type=float, default=0.1, help="least keypoint score drawn")
    p.add_argument("--max-frames", type=int, default=0, help="stop a video or webcam after N frames (0: all)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    kind, items = open_input(args.input)
    output = Path(args.output) if args.output else default_output(args.input, kind)
    # heavy imports after the arguments and the input are checked
    from core.skeleton import load_skeleton
    from core.device import resolve_device
    from evaluation.inference import Preprocess
    from evaluation.sources import read_bgr
    from grouping import GroupingConfig
    from model.checkpoint import load_model
    args.device = resolve_device(args.device)
    if not Path(args.weights).is_file():
        raise UserError(f"{args.weights}: no such checkpoint file")
    model, skeleton, ckpt = load_model(args.weights, args.device, skeleton=load_skeleton(args.skeleton))
    prep = Preprocess.of_checkpoint(ckpt, model.cfg.input_multiple)
    find = PeopleFinder(model, skeleton, prep, GroupingConfig(), args)

    records = []
    if kind in ("image", "folder"):
        if kind == "folder":
            output.mkdir(parents=True, exist_ok=True)
        for path in items:
            bgr = read_bgr(path)
            people = find(bgr)
            target = output / (path.stem + ".jpg") if kind == "folder" else output
            write_atomic_image(target, draw_people(bgr, people, skeleton, args.threshold))
            records.append({"image": path.name, "people": people_json(people, skeleton, args.threshold)})
            print(f"{path.name}: {len(people)} people -> {target}")
    else:
        records = run_video(items, output, find, skeleton, args)
    summary = {"input": str(args.input), "output": str(output), "frames" if kind in ("video", "webcam") else "images":
               len(records), "people": sum(len(r["people"]) for r in records)}
    if args.json:
        json_path = output.with_suffix(".json") if kind != "folder" else output / "people.json"
        write_text_atomic(json_path, json.dumps({"skeleton": skeleton.name,
                                   "keypoints": list(skeleton.keypoints[: skeleton.num_dataset]),
                                   "items": records}))
        summary["json"] = str(json_path)
        print(json.dumps(summary))
    return 0


class PeopleFinder:
    """BGR image -> people in that image's pixels (keypoints [K', 3], score), best first."""

    def __init__(self, model, skeleton, prep, cfg, args):
        self.model, self.skeleton, self.prep, self.cfg, self.args = model, skeleton, prep, cfg, args

    def __call__(self, bgr):
        from core.frame import input_to_image
        from evaluation.inference import predict_maps
        from grouping import group_batch
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        stride = self.model.cfg.stride
        maps = predict_maps(self.model, [rgb], self.prep, self.skeleton, tuple(self.args.scales),
                            self.args.flip, self.args.device, stride)
        people = group_batch(maps.maps, self.skeleton, self.cfg, stride, maps.sizes)[0]
        scale = np.asarray(maps.scales[0], np.float32)  # (sx, sy): input pixels per image pixel
        for p in people:
            k = p["keypoints"]
            found = k[:, 2] > 0
            k[found, :2] = input_to_image(k[found, :2], scale)
        return people


def people_json(people, skeleton, threshold):
    """The dataset's keypoints (x, y, score) of each person, its box over the keypoints drawn, score."""
    out = []
    for p in people:
        k = skeleton.drop_derived(p["keypoints"])
        shown = k[k[:, 2] >= threshold]
        box = ([float(shown[:, 0].min()), float(shown[:, 1].min()),
                float(shown[:, 0].max() - shown[:, 0].min()), float(shown[:, 1].max() - shown[:, 1].min())]
               if len(shown) else None)
        out.append({"keypoints": [[round(float(x), 2), round(float(y), 2), round(float(s), 4)] for x, y, s in k],
                    "box_xywh": box, "score": round(float(p["score"]), 4)})
    return out


# -- inputs and outputs ----------------------------------------------------------------------

def open_input(spec: str):
    """('image', [path]) | ('folder', [paths]) | ('video', path) | ('webcam', index)."""
    if spec.isdigit():
        return "webcam", int(spec)
    path = Path(spec)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise UserError(f"{path}: no images in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return "folder", images
    if not path.is_file():
        raise UserError(f"{path}: no such file or folder")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return "video", path
    return "image", [path]


def default_output(spec: str, kind: str) -> Path:
    name = f"webcam{spec}" if kind == "webcam" else Path(spec).stem
    return Path({"image": f"{name}.pose.jpg", "folder": f"{name}_pose", "video": f"{name}.pose.mp4",
                 "webcam": f"{name}.pose.mp4"}[kind])


def write_atomic_image(path: Path, image):
    tmp = path.with_name(path.stem + ".tmp" + (path.suffix or ".jpg"))
    if not cv2.imwrite(str(tmp), image):
        raise UserError(f"{path}: cannot write the picture here")
    os.replace(tmp, path)


def run_video(source, output: Path, find, skeleton, args) -> list:
    """Frames -> drawn frames in an .mp4 (written under a temporary name, renamed at the end)."""
    cap = cv2.VideoCapture(source if isinstance(source, int) else str(source))
    if not cap.isOpened():
        raise UserError(f"{source}: cannot open this video or webcam")
    fps_in = cap.get(cv2.CAP_PROP_FPS) or 25.0
    tmp = output.with_name(output.stem + ".tmp.mp4")
    writer, records, times = None, [], []
    try:
        while not args.max_frames or len(records) < args.max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            t = time.perf_counter()
            people = find(frame)
            times.append(time.perf_counter() - t)
            rate = len(times[-30:]) / sum(times[-30:])
            drawn = draw_people(frame, people, skeleton, args.threshold)
            cv2.putText(drawn, f"{rate:.1f} fps", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2,
                        cv2.LINE_AA)
            if writer is None:
                h, w = drawn.shape[:2]
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps_in, (w, h))
            writer.write(drawn)
            records.append({"frame": len(records), "people": people_json(people, skeleton, args.threshold)})
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    if not records:
        raise UserError(f"{source}: no frames could be read")
    os.replace(tmp, output)
    print(f"{len(records)} frames, {len(times) / sum(times):.1f} frames/s -> {output}")
    return records


# -- drawing -------------------------------------------------------------------------------

def tree_limbs(skeleton) -> list:
    """The limbs that first join new keypoints, in the skeleton's order: the body's own tree.

    SimplePose's redundant limbs (listed last: evidence beyond a tree) would clutter a drawing.
    """
    parent = list(range(skeleton.num_keypoints))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    tree = []
    for a, b in skeleton.limbs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[ra] = rb
            tree.append((a, b))
    return tree


def person_colour(i: int) -> tuple:
    """A distinct BGR colour per person (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 1.0)
    return b * 255, g * 255, r * 255


def draw_people(image, people, skeleton, threshold=0.1):
    """A copy of a BGR image with each person's skeleton in its own colour.

    people: [{"keypoints": [K', 3] (x, y, score) in image pixels, "score"}]. Keypoints with
    score >= threshold are drawn as discs whose size and brightness follow the score; limbs join
    drawn keypoints, as thick as their weaker end is confident; the person score sits above.
    """
    out = image.copy()
    unit = max(2, round(max(image.shape[:2]) / 300))  # line width that reads at any image size
    limbs = tree_limbs(skeleton)
    for i, person in enumerate(people):
        colour = np.array(person_colour(i))
        k = np.asarray(person["keypoints"], float)
        ok = k[:, 2] >= threshold
        conf = np.clip(k[:, 2], 0, 1)
        for a, b in limbs:
            if ok[a] and ok[b]:
                c = min(conf[a], conf[b])
                cv2.line(out, _pt(k[a]), _pt(k[b]), tuple(colour * (0.4 + 0.6 * c)),
                         max(1, round(unit * (0.5 + c))), cv2.LINE_AA)
        for j in np.flatnonzero(ok):
            radius = max(2, round(unit * (1 + conf[j])))
            cv2.circle(out, _pt(k[j]), radius, tuple(colour * (0.4 + 0.6 * conf[j])), -1, cv2.LINE_AA)
            cv2.circle(out, _pt(k[j]), radius, (0, 0, 0), 1, cv2.LINE_AA)
        if ok.any():
            x0, y0 = k[ok, 0].min(), k[ok, 1].min()
            cv2.putText(out, f"{person['score']:.2f}", (int(x0), max(12, int(y0) - 2 * unit)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.25 * unit, tuple(colour), 1, cv2.LINE_AA)
    return out


def _pt(k):
    return int(round(k[0])), int(round(k[1]))


if __name__ == "__main__":
    run_cli(main)
