"""Export IMHN's inference graph (IMHN.predict: last stack, finest scale) to ONNX, and check it.

    python tools/export_onnx.py --weights runs/coco/last.pt --out imhn.onnx [--input-size 512]
        [--batch-size 1] [--image data/sample/val2017/000000000139.jpg] [--tolerance 1e-3] [--json]

The graph takes images [N, 3, S, S] (float32, normalized as for training; N and S fixed at
export) and returns raw maps [N, C, S/4, S/4] (no sigmoid; channel order of the checkpoint's
skeleton). After export, onnxruntime (CPU) runs it on a real image, letterboxed to S x S and
normalized as in training, and the largest absolute difference from PyTorch's output is
reported; beyond --tolerance x max(1, largest |output|) the file is not written. The file
appears under --out only once it has passed (written to a temporary name in the same folder,
then renamed).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
import logging
import os
import time
import warnings

import cv2
import numpy as np
import torch

from core.errors import ArgumentParser, UserError, run_cli
from evaluation.inference import normalization_of
from evaluation.sources import read_bgr
from model.checkpoint import load_model
from pipelines.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT / "data" / "sample" / "val2017" / "000000000139.jpg"


class PredictGraph(torch.nn.Module):
    """images [N, 3, S, S] -> IMHN.predict(images) [N, C, S/4, S/4]; what the ONNX file holds."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model.predict(images)


def letterbox(image_bgr: np.ndarray, size: int, mean, std, fill: float = 0.0) -> np.ndarray:
    """BGR uint8 [H, W, 3] -> normalized RGB float32 [3, size, size]: scaled to fit, padded right/bottom."""
    h, w = image_bgr.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    canvas = np.full((size, size, 3), fill, np.float32)
    canvas[:nh, :nw] = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_AREA)[..., ::-1]
    return ((canvas - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1).astype(np.float32)


def export(graph: torch.nn.Module, example: torch.Tensor, path: Path, opset):
    """Write the ONNX file for `graph` traced at `example`'s shape (torch.export-based exporter)."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        torch.onnx.export(graph, (example,), str(path), input_names=["images"], output_names=["maps"],
                          opset_version=opset, dynamo=True, external_data=False, verbose=False)


def onnx_run(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, required=True, help="checkpoint (model/checkpoint.py)")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--input-size", type=int, help="input side S (default: the checkpoint's input_size)")
    parser.add_argument("--batch-size", type=int, default=1, help="N, fixed in the graph")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="real image for the check")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="largest allowed |onnxruntime - PyTorch| on the check image, "
                             "times max(1, largest |output|)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)

    image = read_bgr(args.image)
    model, skeleton, ckpt = load_model(args.weights, device="cpu")
    size = args.input_size or int(ckpt["input_size"])
    if size <= 0 or size % model.cfg.input_multiple:
        raise UserError(f"--input-size {size}: must be a positive multiple of {model.cfg.input_multiple}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    mean, std, _ = normalization_of(ckpt)  # the graph does no normalization: feed it what training did
    images = np.repeat(letterbox(image, size, mean, std, fill=PipelineConfig().fill)[None], args.batch_size, axis=0)
    graph = PredictGraph(model).eval()
    with torch.no_grad():
        expected = graph(torch.from_numpy(images)).numpy()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.parent / f".{args.out.name}.{os.getpid()}.tmp"
    t0 = time.perf_counter()
    try:
        export(graph, torch.from_numpy(images), tmp, args.opset)
        export_s = time.perf_counter() - t0
        got = onnx_run(tmp, images)
        if got.shape != expected.shape:
            raise UserError(f"{args.out}: onnxruntime gives {list(got.shape)}, PyTorch {list(expected.shape)}; "
                            f"not written")
        diff = float(np.abs(got - expected).max())
        allowed = args.tolerance * max(1.0, float(np.abs(expected).max()))  # relative for large maps
        if not diff <= allowed:
            raise UserError(f"{args.out}: onnxruntime differs from PyTorch by {diff:.3g} on {args.image} "
                            f"(allowed {allowed:.3g}); not written")
        import onnx
        opset = next(o.version for o in onnx.load(str(tmp), load_external_data=False).opset_import
                     if o.domain in ("", "ai.onnx"))
        os.replace(tmp, args.out)
    finally:
        tmp.unlink(missing_ok=True)

    result = {"out": str(args.out), "weights": str(args.weights), "skeleton": skeleton.name,
              "input_shape": list(images.shape), "output_shape": list(expected.shape), "opset": opset,
              "image": str(args.image), "max_abs_diff": diff,
              "max_abs_output": float(np.abs(expected).max()), "export_s": round(export_s, 2),
              "megabytes": round(args.out.stat().st_size / 2 ** 20, 2)}
    print(f"wrote {args.out} ({result['megabytes']} MB, opset {opset}): {result['input_shape']} -> "
          f"{result['output_shape']}; max |onnxruntime - PyTorch| = {diff:.3g} on {args.image.name}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run_cli(main)
