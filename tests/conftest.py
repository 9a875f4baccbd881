"""Shared fixtures: the bundled sample, the skeleton, shards made once per session, GPU skip."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"

# two cores in CI: keep torch from oversubscribing them when tests start subprocesses
os.environ.setdefault("OMP_NUM_THREADS", "2")


def _has_cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is present on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def skeleton():
    from core.skeleton import load_skeleton
    return load_skeleton()


def run_tool(*args, check=True, timeout=600, env=None):
    """Run a repo command line (`tools/x.py ...`, `eval.py ...`) as a user would, from the root."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def load_tool(name: str):
    """The module of tools/<name>.py (the tools are scripts, not a package), to test its functions."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def sample_shards(tmp_path_factory):
    """Shards of the sample's train and val splits, made once per test session.

    Returns {"train": Path, "val": Path}: folders holding the tar shards, their DALI index
    files and manifest.json.
    """
    out = tmp_path_factory.mktemp("shards")
    dirs = {}
    for split in ("train", "val"):
        d = out / split
        run_tool("tools/make_shards.py", "--images", SAMPLE / f"{split}2017",
                 "--annotations", SAMPLE / "annotations" / f"person_keypoints_{split}2017.json",
                 "--out", d, "--split", split, "--shard-size", "2", "--workers", "2")
        dirs[split] = d
    return dirs


@pytest.fixture(scope="session")
def straight(sample_shards, tmp_path_factory):
    """A straight training run: 2N steps of configs/tiny.yaml (tests/runs.py) in one go, torchrun
    with 2 processes, deterministic -> its output folder. Runs that are stopped, killed or split
    over nodes must end with its weights."""
    from tests.runs import N, torchrun, write_config
    folder = tmp_path_factory.mktemp("straight")
    torchrun(write_config(folder), sample_shards["train"], folder / "out", "--max-steps", 2 * N)
    return folder / "out"
