#!/usr/bin/env python
"""Images/s of the whole data pipeline (decode, augment, targets) against the classic design.

    python tools/bench_pipeline.py --shards shards/sample-train --device cpu --json

Two loaders over the same shards, in the same run, with the same CPU cores (--workers):
  dali     pipelines.loader: DALI decode + warps (CPU operators, or mixed/GPU with --device gpu),
           batched target maps (torch reference on CPU, CuPy kernel on GPU)
  classic  what it replaces: a torch DataLoader whose worker processes decode with cv2, warp with
           cv2.warpAffine and render each sample's targets in NumPy, a person and a channel at a
           time (the original SimplePose's design), then collate
Both draw the same augmentation (pipelines.config.AugmentConfig) and produce the same batch
dict. They are timed in alternating rounds (median reported), each after warm-up batches, over
whole epochs as training uses them; CPU time per image (threads and worker processes) is
reported too, steadier than wall time on a shared machine. The last stdout line with --json is
one JSON object with images/s of each and their ratio (and, on GPU, the device memory in use).

    python tools/bench_pipeline.py --shards shards/sample-train --device cpu --sizes 15 150 --json

times datasets of 15 and 150 images (the shards' samples, repeated) in one run: with batches of
8 the first has an epoch every batch, the second one every 18, which is where a loader that
starts anything per epoch loses. The JSON then holds one entry per size under "runs".
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from core.errors import ArgumentParser, UserError, run_cli  # noqa: E402
from core.skeleton import COCO_SKELETON, load_skeleton  # noqa: E402
from pipelines.config import PipelineConfig  # noqa: E402
from pipelines.loader import make_loader  # noqa: E402
from pipelines.targets import input_to_map, map_to_input  # noqa: E402


# -- the classic design ---------------------------------------------------------------------------
def classic_affine(kpts, width, height, aug, size, rng):
    """The same random affine as pipelines/augment.py, drawn with numpy: (2x3 matrix original ->
    input pixels, centres at integers; flipped)."""
    fit = size / max(width, height)
    scale, cx, cy = fit, (width - 1) / 2, (height - 1) / 2
    lab = kpts[..., 2] > 0
    main = [p for p in range(len(kpts)) if lab[p].sum() >= aug.main_min_keypoints]
    if aug.center == "person" and main:
        person = kpts[main[rng.integers(len(main))]]
        xy = person[person[:, 2] > 0, :2]
        lo, hi = xy.min(0), xy.max(0)
        scale = min(aug.target_dist * size / max((hi - lo).max(), 1.0), aug.max_upscale)
        cx, cy = (lo + hi) / 2
    elif aug.center == "random":
        scale = size / min(width, height)
        cx, cy = rng.uniform(0, 1) * (width - 1), rng.uniform(0, 1) * (height - 1)
    if rng.uniform() < aug.scale_prob:
        scale *= rng.uniform(aug.scale_min, aug.scale_max)
    cx, cy = np.array([cx, cy]) + rng.uniform(-aug.max_shift, aug.max_shift, 2)
    angle = math.radians(rng.uniform(-aug.max_rotation, aug.max_rotation))
    flip = rng.uniform() < aug.flip_prob
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    f = -1.0 if flip else 1.0
    m = np.array([[c * f, -s, 0.0], [s * f, c, 0.0]])
    m[:, 2] = (size - 1) / 2 - m[:, :2] @ np.array([cx, cy])
    return m, flip


def classic_targets(kp, person_mask, skeleton, tcfg) -> np.ndarray:
    """One sample's targets [C, h, w] in NumPy, a channel and a person at a time (the original's
    loops), with the definition of pipelines/targets.py.

    Args:
        kp: [P, K', 3] input pixels. person_mask: [h, w] float32 0/1.
    """
    h, w = person_mask.shape
    L, K = skeleton.num_limbs, skeleton.num_keypoints
    out = np.zeros((skeleton.num_channels, h, w), np.float32)
    qx, qy = map_to_input(np.arange(w, dtype=np.float32), tcfg.stride), map_to_input(np.arange(h, dtype=np.float32), tcfg.stride)
    r2, reach = tcfg.keypoint_radius() ** 2, math.ceil(tcfg.keypoint_radius() / tcfg.stride) + 1
    for k in range(K):
        for x, y, v in kp[:, k]:
            if v <= 0:
                continue
            j, i = int(round(input_to_map(x, tcfg.stride))), int(round(input_to_map(y, tcfg.stride)))
            xs, ys = slice(max(j - reach, 0), max(j + reach + 1, 0)), slice(max(i - reach, 0), max(i + reach + 1, 0))
            d2 = (qy[ys, None] - y) ** 2 + (qx[None, xs] - x) ** 2
            g = np.where(d2 <= r2, np.exp(-d2 / (2 * tcfg.keypoint_sigma ** 2)), 0)
            np.maximum(out[L + k, ys, xs], g, out=out[L + k, ys, xs])
    rl = tcfg.limb_half_width()
    for n, (a, b) in enumerate(skeleton.limbs):
        for pa, pb in zip(kp[:, a], kp[:, b]):
            if pa[2] <= 0 or pb[2] <= 0:
                continue
            lo, hi = np.minimum(pa[:2], pb[:2]) - rl, np.maximum(pa[:2], pb[:2]) + rl
            j0, i0 = np.ceil(input_to_map(lo, tcfg.stride)).astype(int).clip(0)
            j1, i1 = np.floor(input_to_map(hi, tcfg.stride)).astype(int) + 1
            if j1 <= j0 or i1 <= i0:
                continue
            px, py = qx[None, j0:j1], qy[i0:i1, None]
            d = pb[:2] - pa[:2]
            len2 = float(d @ d)
            t = np.clip(((px - pa[0]) * d[0] + (py - pa[1]) * d[1]) / (len2 if len2 > 0 else 1.0), 0, 1)
            d2 = (px - pa[0] - t * d[0]) ** 2 + (py - pa[1] - t * d[1]) ** 2
            g = np.where(d2 <= rl * rl, np.exp(-d2 / (2 * tcfg.limb_sigma ** 2)), 0)
            np.maximum(out[n, i0:i1, j0:j1], g, out=out[n, i0:i1, j0:j1])
    e = tcfg.person_mask_erode
    out[L + K] = cv2.erode(person_mask, np.ones((2 * e + 1, 2 * e + 1), np.uint8)) if e else person_mask
    out[L + K + 1] = out[L:L + K].max(0) if K else 0
    return out


class ClassicDataset(torch.utils.data.Dataset):
    """Raw shard samples in memory; each item decoded, warped and rendered on a CPU worker."""

    def __init__(self, raw_samples, cfg, skeleton, seed=0):
        self.raw, self.cfg, self.skeleton, self.seed = raw_samples, cfg, skeleton, seed
        self.calls = 0

    def __len__(self):
        return len(self.raw)

    def __getitem__(self, index):
        cfg, sk = self.cfg, self.skeleton
        S, stride, K = cfg.input_size, cfg.targets.stride, sk.num_dataset
        self.calls += 1
        rng = np.random.default_rng([self.seed, index, self.calls, os.getpid()])
        jpg, kpts, mask_png = (self.raw[index][k] for k in ("jpg", "kpts", "mask.png"))
        bgr = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        flags = cv2.imdecode(np.frombuffer(mask_png, np.uint8), cv2.IMREAD_UNCHANGED)
        kp = np.frombuffer(kpts, "<f4").reshape(-1, K, 3)
        m, flip = classic_affine(kp, bgr.shape[1], bgr.shape[0], cfg.augment, S, rng)
        image = cv2.warpAffine(bgr, m, (S, S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=(cfg.fill,) * 3)[..., ::-1]
        mm = m / stride
        mm[:, 2] -= (stride - 1) / 2 / stride  # map cell j samples input pixel stride * j + (stride - 1) / 2
        flags = cv2.warpAffine(flags, mm, (S // stride, S // stride), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        xy = kp[..., :2] @ m[:, :2].T + m[:, 2]
        kp = np.concatenate([xy, kp[..., 2:]], axis=-1).astype(np.float32)
        if flip:
            kp = kp[:, list(sk.flip[:K])]
        kp = sk.add_derived(kp)
        inside = ((kp[..., :2] >= -0.5) & (kp[..., :2] < S - 0.5)).all(-1) & (kp[..., 2] > 0)
        kp = (kp * inside[..., None])[: cfg.max_people]
        kp = np.concatenate([kp, np.zeros((cfg.max_people - len(kp),) + kp.shape[1:], np.float32)])
        masks = np.stack([(flags & 2) == 0, (flags & 1) > 0]).astype(np.float32)
        targets = classic_targets(kp, masks[1], sk, cfg.targets)
        image = ((image.astype(np.float32) - np.array(cfg.mean, np.float32)) / np.array(cfg.std, np.float32))
        return {"images": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                "keypoints": torch.from_numpy(kp), "masks": torch.from_numpy(masks),
                "targets": torch.from_numpy(targets)}


def read_raw(shards_dir) -> list:
    """[{component: bytes}] of every sample in shard order, via webdataset (the classic loader's
    input, and the source of sized_shards)."""
    import webdataset as wds
    from shards.reader import shard_paths
    urls = [str(p) for p in shard_paths(shards_dir)]
    return [{k: v for k, v in s.items() if not k.startswith("__")}
            for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]


def sized_shards(source, n: int, out: Path) -> Path:
    """A shards folder in `out` holding n samples: the source's in order, repeated under new keys
    when n is larger. A user's dataset of n images, for the timing: how often an epoch ends is
    what separates a loader that restarts per epoch from one that does not."""
    from shards.reader import read_manifest_strict
    from shards.writer import write_manifest, write_shard
    raw = read_raw(source)
    if not raw:
        raise UserError(f"{source}: no samples")
    out.mkdir(parents=True, exist_ok=True)
    entry = write_shard(out, "bench", 0, [(f"{i:09d}", raw[i % len(raw)]) for i in range(n)])
    write_manifest(out, {**read_manifest_strict(source), "shards": [entry], "images": {}})
    return out


# -- timing ---------------------------------------------------------------------------------------
def children_cpu_seconds() -> float:
    """CPU seconds used so far by this process's live child processes (Linux /proc; else 0)."""
    me, total = str(os.getpid()), 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if fields[1] == me:  # fields[1] is the parent pid; [11], [12] user and system clock ticks
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def settle(timeout: float = 10.0, window: float = 0.1):
    """Wait until this process and its workers use under a tenth of a core (at most `timeout`
    seconds). The loader just timed goes on filling its prefetch queue for a moment, with its
    worker processes or threads: without this, that work would run during the other loader's
    timed batches and count in its CPU time (the classic loader's 2 workers x 2 batches ahead
    are most of a second of CPU)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        cpu0 = time.process_time() + children_cpu_seconds()
        time.sleep(window)
        if time.process_time() + children_cpu_seconds() - cpu0 < 0.1 * window:
            return


def time_batches(batches, steps: int, warmup: int, device, desc: str):
    """(images/s, CPU seconds per image) over `steps` batches of the endless iterator `batches`,
    after `warmup`. CPU time counts this process's threads and its worker processes: on a shared
    machine it is steadier than wall time."""
    settle()
    for _ in range(warmup):
        next(batches)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu0, images = time.perf_counter(), time.process_time() + children_cpu_seconds(), 0
    for _ in tqdm(range(steps), desc=desc, unit="batch", leave=False):
        batch = next(batches)
        images += batch["images"].shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter() - start, time.process_time() + children_cpu_seconds() - cpu0
    return images / wall, cpu / images


def endless_dali(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def endless_torch(loader, device):
    while True:
        for batch in loader:
            yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shards", required=True, help="shards folder (tools/make_shards.py)")
    p.add_argument("--skeleton", default=str(COCO_SKELETON), help="skeleton yaml the shards were made for "
                                                                  "(default: COCO's)")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="where the DALI pipeline runs")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    p.add_argument("--steps", type=int, default=20, help="timed batches per loader (default 20)")
    p.add_argument("--warmup", type=int, default=4, help="untimed batches before each round (default 4)")
    p.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per loader; medians reported (default 3)")
    p.add_argument("--workers", type=int, default=os.cpu_count(),
                   help="CPU cores for each loader: DALI threads, DataLoader workers (default: all)")
    p.add_argument("--input-size", type=int, default=512, help="S (default 512)")
    p.add_argument("--sizes", type=int, nargs="+", metavar="N",
                   help="time datasets of N images each (the shards' samples, repeated as needed), "
                        "one after the other in this run, instead of the shards as they are")
    p.add_argument("--skip-classic", action="store_true", help="time the DALI loader only")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = p.parse_args(argv)
    for name in ("batch_size", "steps", "workers", "rounds"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.sizes and min(args.sizes) < args.batch_size:
        raise UserError(f"--sizes: each dataset needs at least one batch ({args.batch_size} images)")
    if args.device == "gpu" and not torch.cuda.is_available():
        raise UserError("--device gpu: no CUDA device is visible to torch")
    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    cfg = PipelineConfig(input_size=args.input_size, batch_size=args.batch_size, num_threads=args.workers)
    skeleton = load_skeleton(args.skeleton)
    result = {"device": args.device, "batch_size": args.batch_size, "input_size": args.input_size,
              "steps": args.steps, "workers": args.workers, "shards": str(args.shards), "runs": []}
    # The parallelism is DALI's threads (resp. the DataLoader's workers); torch's own intra-op
    # threads on the same cores would only contend with them (OpenMP threads spin while waiting).
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes or [None]:
            shards = args.shards if n is None else sized_shards(args.shards, n, Path(tmp) / str(n))
            run = time_loaders(shards, cfg, skeleton, device, args)
            result["runs"].append(run)
            line = f"{run['images']} images: dali {run['dali_images_per_s']:.1f} images/s"
            if "ratio" in run:
                line += (f", classic {run['classic_images_per_s']:.1f} images/s, ratio {run['ratio']:.2f} "
                         f"(CPU per image {run['dali_cpu_ms_per_image']:.1f} vs {run['classic_cpu_ms_per_image']:.1f} ms)")
            print(line + f" ({args.device}, batch {args.batch_size}, {args.workers} worker(s))")
    if len(result["runs"]) == 1:
        result.update(result["runs"][0])  # one dataset: its figures at the top level too
    if args.json:
        print(json.dumps(result))


def time_loaders(shards, cfg, skeleton, device, args) -> dict:
    """Both loaders over one shards folder, alternating rounds: images/s, CPU ms per image."""
    rates, cpu, result = {"dali": [], "classic": []}, {"dali": [], "classic": []}, {}
    with make_loader(shards, cfg, skeleton, device=device.type) as loader:
        result["images"] = loader.num_samples
        result["batches_per_epoch"] = len(loader)
        streams = {"dali": endless_dali(loader)}
        if not args.skip_classic:
            dataset = ClassicDataset(read_raw(shards), cfg, skeleton)
            classic = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                                  num_workers=args.workers, persistent_workers=True,
                                                  pin_memory=device.type == "cuda", prefetch_factor=2)
            streams["classic"] = endless_torch(classic, device)
        # alternate rounds, so that a change of load on a shared machine hits both alike; each
        # round's warm-up drains what the idle loader prepared while the other one was timed
        for r in range(args.rounds):
            for name, stream in streams.items():
                rate, seconds = time_batches(stream, args.steps, args.warmup, device, f"{name} {r + 1}")
                rates[name].append(rate)
                cpu[name].append(seconds)
                if name == "dali" and r == 0 and device.type == "cuda":
                    free, total = torch.cuda.mem_get_info(device)
                    result["gpu_memory_gib"] = (total - free) / 2**30  # the device's: DALI's pools and torch's
                    result["torch_peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["over_max_people"] = loader.stats()["over_max_people"]
    for name, values in rates.items():
        if values:
            result[f"{name}_images_per_s"] = float(np.median(values))
            result[f"{name}_rounds"] = values
            result[f"{name}_cpu_ms_per_image"] = 1000 * float(np.median(cpu[name]))
    if rates["classic"]:
        result["ratio"] = result["dali_images_per_s"] / result["classic_images_per_s"]
        result["cpu_ratio"] = result["classic_cpu_ms_per_image"] / result["dali_cpu_ms_per_image"]
    return result


if __name__ == "__main__":
    run_cli(main)
