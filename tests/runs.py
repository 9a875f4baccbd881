"""Helpers to run train_ddp.py as a user does (torchrun, 2 CPU processes) and read what it wrote."""
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT
from training.log import read_jsonl

N = 8  # steps of each half of a run; the straight run (conftest's `straight`) takes 2N
# 2 processes on 2 cores: one thread each; the GPU hidden, this is the CPU path (on a 1-GPU
# machine rank 1 would otherwise ask for a GPU 1)
ENV = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def write_config(folder: Path, **changes) -> Path:
    """configs/tiny.yaml with top-level or dotted ("optim.lr_per_process") keys changed."""
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    # ema_decay: the averaged weights go through save, resume and loading too
    cfg.update(log_every=4, checkpoint_every=1000, deterministic=True, ema_decay=0.9)
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        section = cfg
        for p in parents:
            section = section.setdefault(p, {})
        section[leaf] = value
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def torchrun_args(config, shards, out, *extra, nproc=2, launcher=("--standalone",)):
    """The torchrun command line; `launcher`: torchrun's own options besides --nproc_per_node."""
    return [sys.executable, "-m", "torch.distributed.run", *launcher, f"--nproc_per_node={nproc}",
            str(ROOT / "train_ddp.py"), "--config", str(config), "--shards", str(shards), "--out", str(out),
            *map(str, extra)]


def torchrun(config, shards, out, *extra):
    proc = subprocess.run(torchrun_args(config, shards, out, *extra), cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **ENV})
    assert proc.returncode == 0, f"exit {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


def popen(args, **kwargs):
    """A training command started in a session of its own, so that a failing test can end it and
    its workers together (os.killpg)."""
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV, **kwargs.pop("env", {})}, start_new_session=True, **kwargs)


def records(out: Path, kind: str) -> list:
    return [r for r in read_jsonl(out / "log.jsonl") if r["kind"] == kind]


def logged(out: Path, kind: str) -> bool:
    """Whether the run in `out` has logged a record of `kind` yet."""
    try:
        return bool(records(out, kind))
    except (FileNotFoundError, ValueError):  # not there yet, or a line half written
        return False
