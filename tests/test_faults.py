"""Training that survives faults on its own, on the CPU (gloo), as a cluster would run it.

- A worker SIGKILLed after the first checkpoint (written by checkpoint_minutes): torchrun
  (--max-restarts) reruns the same command line, `--resume auto` continues from last.pt, and the
  run ends with the straight run's weights.
- Two torchrun "nodes" (c10d rendezvous on localhost) train as one world of 2: the same weights.
- Damaged shards: a missing or changed shard is named before any step; one damaged while
  training reads it stops the run with its name, and the last checkpoint stays whole.
- A rank that freezes in a collective, unseen by any launcher: the other one stops with one line
  after collective_timeout_minutes instead of hanging.
"""
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint
from tests.conftest import ROOT, run_tool
from tests.runs import ENV, N, logged, popen, records, torchrun_args, write_config


# torchrun's own setting, without which its restarts cannot connect (training/distributed.py)
RESTARTABLE = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def assert_same_weights(a_dir: Path, b_dir: Path):
    a, b = load_checkpoint(a_dir / "last.pt"), load_checkpoint(b_dir / "last.pt")
    assert a["step"] == b["step"] and a["data"] == b["data"]
    for weights in ("model", "train_model"):  # averaged and live
        for name, value in a[weights].items():
            assert torch.equal(value, b[weights][name]), (weights, name)


def children(pid: int) -> list:
    """The pids of `pid`'s child processes (torchrun's workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:  # the field after the state is the parent's pid
            found.append(int(stat.parent.name))
    return found


def wait_for(out: Path, kind: str, proc, seconds: float = 180):
    deadline = time.monotonic() + seconds
    while not logged(out, kind):
        assert proc.poll() is None, f"the run ended before logging {kind!r}:\n{proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"no {kind!r} record within {seconds} s"
        time.sleep(0.05)


def finish(proc, seconds: float = 300) -> str:
    """Wait for a popen()ed run; kill its whole session if it overstays. Returns its stderr."""
    try:
        _, stderr = proc.communicate(timeout=seconds)
        return stderr
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigkilled_worker_is_restarted_and_ends_with_the_straight_runs_weights(straight, sample_shards, tmp_path):
    # checkpoints by wall time (every 1.2 s, a step or two here) and a log line per step change
    # nothing in the training
    config = write_config(tmp_path, checkpoint_minutes=0.02, log_every=1)
    out = tmp_path / "out"
    proc = popen(torchrun_args(config, sample_shards["train"], out, "--max-steps", 2 * N, "--resume", "auto",
                               launcher=("--standalone", "--max-restarts=2")), env=RESTARTABLE)
    try:
        wait_for(out, "checkpoint", proc)
        workers = children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)
        killed_at = time.time()
    finally:
        stderr = finish(proc)
    assert proc.returncode == 0, stderr[-3000:]
    starts = records(out, "start")
    assert len(starts) == 2 and starts[0]["step"] == 0 and 1 <= starts[1]["step"] < 2 * N, starts
    assert len(records(out, "checkpoint")) >= 3  # by time alone: checkpoint_every is 1000
    assert records(out, "stop")[-1]["reason"] == "done"
    assert_same_weights(straight, out)
    restarted = [r for r in records(out, "train") if r["time"] > killed_at]
    print(f"kill to the restarted run's first step: {restarted[0]['time'] - killed_at:.1f} s; "
          f"restarted at step {starts[1]['step']}")


def test_restarts_without_their_torchrun_setting_are_refused_at_the_start(sample_shards, tmp_path):
    args = torchrun_args(write_config(tmp_path), sample_shards["train"], tmp_path / "out", "--resume", "auto",
                         nproc=1, launcher=("--standalone", "--max-restarts=1"))
    stderr = finish(popen(args, env={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "0"}))
    errors = {line for line in stderr.splitlines() if line.startswith("error:")}
    assert len(errors) == 1 and "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in errors.pop(), stderr[-3000:]
    assert not (tmp_path / "out" / "last.pt").exists()


def test_two_nodes_train_as_one_world(straight, sample_shards, tmp_path):
    config, out = write_config(tmp_path), tmp_path / "out"
    launcher = ("--nnodes=2", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{free_port()}",
                "--rdzv_id=two-nodes")
    args = torchrun_args(config, sample_shards["train"], out, "--max-steps", 2 * N, "--resume", "auto",
                         nproc=1, launcher=launcher)
    nodes = [popen(args) for _ in range(2)]
    errors = [finish(node) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(e[-2000:] for e in errors)
    (start,) = records(out, "start")
    assert start["world_size"] == 2
    assert records(out, "checkpoint")[-1]["ranks_identical"] is True
    assert_same_weights(straight, out)  # two nodes of one process = one node of two


@pytest.fixture
def shards_copy(sample_shards, tmp_path) -> Path:
    """A copy of the sample's train shards, free to damage."""
    return Path(shutil.copytree(sample_shards["train"], tmp_path / "shards"))


def damage(shard: Path, how: str):
    data = bytearray(shard.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:  # changed, same size: bytes in the middle of the archive inverted
        middle = len(data) // 2
        data[middle:middle + 4096] = bytes(b ^ 0xFF for b in data[middle:middle + 4096])
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("how, flags", [("missing", []), ("truncated", []), ("changed", ["--verify-shards"])])
def test_damaged_shard_is_named_before_any_step(shards_copy, tmp_path, how, flags):
    shard = sorted(shards_copy.glob("*.tar"))[1]
    if how == "missing":
        shard.unlink()
    else:
        damage(shard, how)
    out = tmp_path / "out"
    proc = run_tool("train_ddp.py", "--config", write_config(tmp_path), "--shards", shards_copy, "--out", out,
                    *flags, check=False, env=ENV)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert shard.name in lines[0] and "damaged" in lines[0] and ("missing" in lines[0]) == (how == "missing")
    assert not out.exists()  # nothing written: it stopped before any work


def test_shard_damaged_while_training_stops_the_run_by_name(shards_copy, tmp_path):
    # 28 images, 4 per batch on 2 processes: 3 steps per epoch, and every epoch reads every shard
    config = write_config(tmp_path, checkpoint_every=2, log_every=1)
    out = tmp_path / "out"
    proc = popen(torchrun_args(config, shards_copy, out, "--max-steps", 200))
    shard = sorted(shards_copy.glob("*.tar"))[0]
    try:
        wait_for(out, "checkpoint", proc)
        damage(shard, "truncated")
    finally:
        stderr = finish(proc, seconds=120)  # never a hang
    assert proc.returncode != 0
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors and all(shard.name in line and "damaged" in line for line in errors), stderr[-3000:]
    ckpt = load_checkpoint(out / "last.pt")  # the last checkpoint is whole, from before the damage
    assert ckpt["step"] >= 2 and ckpt["step"] == records(out, "checkpoint")[-1]["step"]


def test_frozen_rank_stops_the_other_after_the_collective_timeout(sample_shards, tmp_path):
    """Two workers started by hand (torchrun's environment, no launcher watching them); rank 1 is
    frozen (SIGSTOP) after a step: rank 0 waits collective_timeout_minutes, then stops with one line."""
    config = write_config(tmp_path, collective_timeout_minutes=0.2, log_every=1)  # 12 s
    out = tmp_path / "out"
    port = str(free_port())
    args = [sys.executable, str(ROOT / "train_ddp.py"), "--config", str(config), "--shards",
            str(sample_shards["train"]), "--out", str(out), "--max-steps", "200"]
    ranks = [popen(args, env={"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}) for r in range(2)]
    try:
        wait_for(out, "train", ranks[0])
        ranks[1].send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        stderr = finish(ranks[0], seconds=120)
        waited = time.monotonic() - frozen_at
    finally:
        for proc in ranks:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert ranks[0].returncode == 1 and len(errors) == 1, stderr[-3000:]
    assert "rank 0: lost contact with the other ranks" in errors[0] and "Timed out" in errors[0]
    assert 10 <= waited < 60, waited
