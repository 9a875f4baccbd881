"""What rank 0 reports: a tqdm bar, and one JSON object per line in OUT/log.jsonl.

A line every `log_every` steps (kind "train"):
    step, epoch, lr, loss, loss_scale0..N (each scale's share, averaged over the interval and the
    ranks), grad_norm, bad_steps (non-finite steps so far), images_per_s (all ranks),
    step_ms, data_wait (fraction of the interval's wall time spent blocked on the next batch,
    mean over the ranks),
    and on GPU gpu_mem_gib (peak allocated in the interval), gpu_reserved_gib, gpu_util (mean
    percent of time a kernel ran, sampled by nvidia-smi five times a second; null without it).
A line per validation (kind "val", training/validation.py): step, epoch, the ten COCO numbers
(AP, AP50, AP75, APM, APL, AR, AR50, AR75, ARM, ARL), images, detections, seconds (wall time of
the validation, left out of the train lines' times), ms_per_image, best (AP improved: best.pt).
Events: kind "start" (world size, device, amp, steps), "checkpoint" (path, step, ranks_identical),
"stop" (why the run ended; samples seen by all ranks in this run, and how many of them had more
than pipeline.max_people people, the smallest of whom were dropped).
"""
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import torch


class IntervalMeter:
    """Sums over the steps since the last `flush`: wall time, data wait, losses, bad steps.

    Losses stay on the device (no host sync per step); `flush` hands back the sums and resets.
    """

    def __init__(self):
        self.reset()

    def reset(self):
        self.start = time.perf_counter()
        self.wait_s = 0.0
        self.steps = 0
        self.good = 0
        self.sums = None  # device tensor: per-scale losses and the grad norm, summed over good steps

    def timed(self, loader):
        """Iterate `loader`, adding the time blocked in each `next()` to the data wait."""
        batches = iter(loader)
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            self.wait_s += time.perf_counter() - t0
            if batch is None:
                return
            yield batch

    def exclude(self, seconds: float):
        """Leave `seconds` spent on something else (validation) out of the interval's wall time."""
        self.start += seconds

    def add(self, values: torch.Tensor, ok: bool):
        self.steps += 1
        if ok:
            self.good += 1
            self.sums = values if self.sums is None else self.sums + values

    def flush(self):
        """(wall seconds, data-wait seconds, steps, summed values or None, good steps); then reset."""
        out = (time.perf_counter() - self.start, self.wait_s, self.steps, self.sums, self.good)
        self.reset()
        return out


def gpu_stats(device: torch.device, busy: "BusySampler | None") -> dict:
    """Peak memory since the last call and the mean utilization, on a CUDA device; {} on the CPU."""
    if device.type != "cuda":
        return {}
    stats = {"gpu_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
             "gpu_reserved_gib": round(torch.cuda.memory_reserved(device) / 2**30, 3),
             "gpu_util": busy.take() if busy is not None else None}
    torch.cuda.reset_peak_memory_stats(device)
    return stats


class BusySampler:
    """Mean of the numbers a sampling command prints, one per line, between calls to `take`.

    For the GPU: `nvidia-smi --query-gpu=utilization.gpu ... -lms 200` prints NVML's
    utilization (percent of the last sample period during which a kernel ran) five times a
    second; a reader thread sums them. (torch.cuda.utilization needs the pynvml module, which
    many images lack; nvidia-smi comes with the driver.)
    """

    def __init__(self, command: list):
        self._proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._lock = threading.Lock()
        self._sum, self._count = 0.0, 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        for line in self._proc.stdout:
            try:
                value = float(line.strip())
            except ValueError:  # a header or an error message
                continue
            with self._lock:
                self._sum += value
                self._count += 1

    def take(self):
        """Mean since the last call, or None when no sample came."""
        with self._lock:
            mean = self._sum / self._count if self._count else None
            self._sum, self._count = 0.0, 0
        return mean

    def close(self, wait: float = 0.0):
        """Stop the command (after up to `wait` seconds for it to end by itself); the samples
        read so far can still be taken."""
        try:
            self._proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self._proc.terminate()
            self._proc.wait()
        self._thread.join(timeout=5)


def gpu_busy_sampler(device: torch.device):
    """A BusySampler of `device`'s utilization, or None (CPU, or no nvidia-smi)."""
    if device.type != "cuda" or shutil.which("nvidia-smi") is None:
        return None
    # CUDA_VISIBLE_DEVICES renumbers the GPUs: name this one by its UUID
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    target = f"GPU-{uuid}" if uuid is not None else str(device.index)
    return BusySampler(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                        "-i", target, "-lms", "200"])


class JsonlLog:
    """Appends one JSON object per line, flushed at once (a killed run keeps every line written).

    Inactive (writes nothing) on ranks other than 0.
    """

    def __init__(self, path, active: bool):
        self.path = Path(path)
        self.active = active

    def write(self, kind: str, **fields):
        if not self.active:
            return
        record = {"kind": kind, "time": round(time.time(), 3), **fields}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_jsonl(path) -> list:
    """Every record of a log.jsonl (for tests and tools)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
