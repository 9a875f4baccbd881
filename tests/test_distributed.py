"""training/distributed.py without a GPU: the device choice and its errors, and a UserError on one
rank stopping every rank (two gloo processes under torchrun, the GPU hidden)."""
import os
import subprocess
import sys

import pytest
import torch

from core.errors import UserError
from tests.conftest import ROOT
from training.distributed import Dist, init_distributed, on_every_rank

ONE = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture
def one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_device_choice(one_process, monkeypatch):
    assert init_distributed("cpu").device == torch.device("cpu")
    with pytest.raises(UserError, match="expected auto, cpu or cuda"):
        init_distributed("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert init_distributed("auto").device == torch.device("cpu")
    with pytest.raises(UserError, match="no CUDA device"):
        init_distributed("cuda")


def test_a_local_rank_past_the_visible_gpus_is_a_user_error(one_process, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    for device in ("auto", "cuda"):
        with pytest.raises(UserError, match="needs GPU 1, but only 1 GPU"):
            init_distributed(device)


def test_on_every_rank_in_one_process():
    assert on_every_rank(ONE, lambda a, b=0: a + b, 2, b=3) == 5

    def fails():
        raise UserError("shards/x: broken")
    with pytest.raises(UserError, match="^shards/x: broken$"):
        on_every_rank(ONE, fails)


SCRIPT = """
from core.errors import UserError
from training.distributed import init_distributed, on_every_rank, shutdown
d = init_distributed("auto")
def check():
    if d.rank == 1:
        raise UserError("the kernel differs")
    return "fine"
try:
    print("result", on_every_rank(d, check))
except UserError as e:
    print("stopped:", e)
shutdown(d)
"""


@pytest.mark.slow
def test_a_user_error_on_one_rank_stops_every_rank(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--tee=1",
                           str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    stopped = [line for line in proc.stdout.splitlines() if "stopped: rank 1: the kernel differs" in line]
    assert len(stopped) == 2 and "result" not in proc.stdout
