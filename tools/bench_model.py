"""Benchmark IMHN's training step: forward + loss + backward images/s, peak memory, FLOPs, peak fraction.

    python tools/bench_model.py --config configs/model/imhn.yaml --device cuda [--batch-size 4]
        [--input-size 512] [--dtype bf16] [--no-channels-last] [--compile] [--steps 20] [--json]
    python tools/bench_model.py --config configs/model/tiny.yaml --device cpu --input-size 128 --json

--config is a model yaml (a ModelConfig mapping) or a training yaml (its `model:` and `loss:`
sections; its pipeline.input_size is then the default --input-size). Inputs are synthetic
(random images, sparse random targets, a full loss mask): this measures the network and the
loss, not the data pipeline, and takes no optimizer step.
FLOPs per image are counted with torch.utils.flop_counter.FlopCounterMode on the meta device
(shapes only; convolutions and matmuls, the elementwise work is not counted), forward and
forward + backward. The achieved fraction divides the measured forward + backward FLOP/s by the
device's dense bf16 peak (table below; null on CPU or an unknown GPU) whatever --dtype is.
On CUDA the defaults are bf16 autocast and channels_last; on CPU fp32, contiguous.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import platform
import resource
import time

import torch
from tqdm import tqdm

from core.config import from_dict, load_yaml
from core.errors import ArgumentParser, UserError, run_cli
from core.skeleton import COCO_SKELETON, load_skeleton
from model.config import LossConfig, ModelConfig
from model.imhn import IMHN, build_model, count_parameters
from model.loss import multiscale_loss

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from the vendors' datasheets; the first
# name fragment found in torch.cuda.get_device_name() wins, so the specific ones come first.
BF16_PEAKS = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("GH200", 989e12), ("H100", 989e12),  # H100 SXM
    ("H200", 989e12), ("H800", 989e12), ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12),
    ("L4", 121e12), ("A10", 125e12),
)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def load_configs(path: Path):
    """(ModelConfig, LossConfig, input size or None) from a model yaml or a training yaml's
    model / loss / pipeline.input_size."""
    data = load_yaml(path)
    if isinstance(data.get("model"), dict):  # a training yaml
        loss = from_dict(LossConfig, data.get("loss") or {}, f"{path}: loss")
        size = (data.get("pipeline") or {}).get("input_size")
        return from_dict(ModelConfig, data["model"], f"{path}: model"), loss, size
    return from_dict(ModelConfig, data, str(path)), LossConfig(), None


def count_flops(cfg: ModelConfig, num_channels: int, size: int) -> dict:
    """FLOPs per image of IMHN at input size x size: forward, and forward + backward (meta device)."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        model = IMHN(cfg, num_channels).eval()  # eval: BatchNorm takes a batch of 1 at any size
        images = torch.empty(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter:
        outputs = model(images)
    forward = counter.get_total_flops()
    with counter:  # the counter restarts on entry
        outputs = model(images)
        sum(o.sum() for stack in outputs for o in stack).backward()
    return {"forward": forward, "forward_backward": counter.get_total_flops()}


def bf16_peak(device_name: str):
    """Dense bf16 peak FLOP/s of a GPU named like torch.cuda.get_device_name(), or None if unknown."""
    return next((peak for key, peak in BF16_PEAKS if key in device_name), None)


def synthetic_batch(batch: int, size: int, num_channels: int, stride: int, device, channels_last: bool):
    """images [B, 3, S, S], targets [B, C, S/stride, S/stride] (~5% non-zero), weight [B, 1, ...] of ones."""
    g = torch.Generator(device="cpu").manual_seed(0)
    m = size // stride
    images = torch.randn(batch, 3, size, size, generator=g)
    targets = torch.rand(batch, num_channels, m, m, generator=g) * (torch.rand(batch, num_channels, m, m, generator=g) < 0.05)
    images = images.to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(device), torch.ones(batch, 1, m, m, device=device)


def time_steps(model, batch, skeleton, loss_cfg, dtype, steps: int, warmup: int, device) -> dict:
    """Run warmup + timed forward/loss/backward steps; median and mean seconds per step, peak memory."""
    images, targets, weight = batch

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss, _ = multiscale_loss(model(images), targets, weight, skeleton, loss_cfg)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in tqdm(range(warmup), desc="warm-up", leave=False):
        loss = step()
    if not torch.isfinite(loss):
        raise RuntimeError(f"the loss is {loss.item()} during warm-up")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in tqdm(range(steps), desc="timed", leave=False):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    else:  # the process's peak resident set: everything, model and Python included (ru_maxrss is KiB)
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu_max_rss"
    # the median step: robust to the odd slow step on a shared machine
    return {"seconds_per_step": times[len(times) // 2], "mean_seconds_per_step": sum(times) / len(times),
            "peak_memory_mb": round(peak / 2 ** 20, 1), "memory_kind": kind}


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="model yaml or training yaml")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=4, help="images per step (original: 4 per GPU)")
    parser.add_argument("--input-size", type=int,
                        help="input side S (default: a training yaml's pipeline.input_size, else 512 as the paper)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), help="autocast dtype (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                        help="channels_last memory format (default: on for cuda)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up compiles)")
    parser.add_argument("--skeleton", type=Path, default=COCO_SKELETON, help="skeleton yaml (output channels)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available here")
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 1:
        raise UserError("--batch-size, --steps and --warmup must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, loss_cfg, yaml_size = load_configs(args.config)
    args.input_size = args.input_size or yaml_size or 512
    if args.input_size <= 0 or args.input_size % cfg.input_multiple:
        raise UserError(f"--input-size {args.input_size}: must be a positive multiple of {cfg.input_multiple} "
                        f"(stride 4 x 2**depth for {args.config})")
    skeleton = load_skeleton(args.skeleton)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    channels_last = device.type == "cuda" if args.channels_last is None else args.channels_last

    torch.manual_seed(0)
    model = build_model(cfg, skeleton.num_channels, device, channels_last=channels_last, compile=args.compile)
    model.train()
    batch = synthetic_batch(args.batch_size, args.input_size, skeleton.num_channels, cfg.stride, device,
                            channels_last)
    timing = time_steps(model, batch, skeleton, loss_cfg, DTYPES[dtype_name], args.steps, args.warmup, device)
    flops = count_flops(cfg, skeleton.num_channels, args.input_size)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = bf16_peak(name)
    else:
        name, peak = platform.processor() or platform.machine(), None
    images_per_s = args.batch_size / timing["seconds_per_step"]
    achieved = flops["forward_backward"] * images_per_s

    result = {
        "config": str(args.config), "device": args.device, "device_name": name,
        "torch": torch.__version__, "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "batch_size": args.batch_size, "input_size": args.input_size, "dtype": dtype_name,
        "channels_last": channels_last, "compile": args.compile, "steps": args.steps,
        "parameters": count_parameters(model),
        "images_per_s": round(images_per_s, 3), "ms_per_step": round(1e3 * timing["seconds_per_step"], 2),
        "mean_ms_per_step": round(1e3 * timing["mean_seconds_per_step"], 2),
        "peak_memory_mb": timing["peak_memory_mb"], "memory_kind": timing["memory_kind"],
        "gflops_forward_per_image": round(flops["forward"] / 1e9, 2),
        "gflops_forward_backward_per_image": round(flops["forward_backward"] / 1e9, 2),
        "achieved_tflops": round(achieved / 1e12, 3),
        "bf16_peak_tflops": peak / 1e12 if peak else None,
        "fraction_of_bf16_peak": round(achieved / peak, 4) if peak else None,
    }
    print(f"{args.config} on {name} ({args.device}, {dtype_name}, channels_last={channels_last}, "
          f"compile={args.compile}), batch {args.batch_size} at {args.input_size}:")
    print(f"  {result['parameters'] / 1e6:.2f} M parameters; {result['gflops_forward_per_image']} GFLOP forward, "
          f"{result['gflops_forward_backward_per_image']} GFLOP forward+backward per image")
    print(f"  {result['images_per_s']} images/s (median {result['ms_per_step']} ms/step), peak memory "
          f"{result['peak_memory_mb']} MB ({result['memory_kind']}), {result['achieved_tflops']} TFLOP/s"
          + (f" = {100 * result['fraction_of_bf16_peak']:.1f}% of the bf16 peak" if peak else ""))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run_cli(main)
