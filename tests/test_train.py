"""train_ddp.py end to end on the CPU: torchrun with 2 processes (gloo) and the tiny config on the
sample's train shards, as a user runs it.

One straight run of 2N steps serves several tests (the loss falls, the ranks agree, the checkpoint
loads for inference and in eval.py, the log has what it promises). A run stopped by SIGTERM after a
step or two leaves a checkpoint that --resume takes to 2N steps with the straight run's weights, bit
for bit (resume is exact, wherever it stops). Bad files and configs get one line and exit status 2.
"""
import os
import signal
import time

import pytest
import torch
import yaml

from model.checkpoint import load_checkpoint, load_model, save_checkpoint
from tests.conftest import ROOT, run_tool
from tests.runs import ENV, N, logged, popen, records, torchrun, torchrun_args, write_config


def test_loss_falls_and_ranks_stay_identical(straight):
    losses = [r["loss"] for r in records(straight, "train")]
    assert len(losses) == 2 * N // 4
    assert torch.isfinite(torch.tensor(losses)).all()
    assert sum(losses[-2:]) / 2 < 0.7 * losses[0], losses
    (ckpt_event,) = records(straight, "checkpoint")
    assert ckpt_event["step"] == 2 * N and ckpt_event["ranks_identical"] is True
    (start,) = records(straight, "start")
    assert start["world_size"] == 2 and start["amp"] == "fp32"


def test_log_reports_scales_throughput_and_data_wait(straight):
    rec = records(straight, "train")[-1]
    parts = [rec[f"loss_scale{i}"] for i in range(5)]
    assert rec["loss"] == pytest.approx(sum(parts))
    assert 0 <= rec["data_wait"] < 1 and rec["images_per_s"] > 0 and rec["step_ms"] > 0
    assert rec["lr"] == pytest.approx(2 * 2.0e-3)  # lr_per_process x 2 processes, after warm-up
    stop = records(straight, "stop")[-1]
    assert stop["reason"] == "done" and stop["samples"] == 2 * N * 8 and 0 <= stop["over_max_people"] <= stop["samples"]
    saved = yaml.safe_load((straight / "config.yaml").read_text())
    assert saved["amp"] == "fp32" and saved["pipeline"]["input_size"] == 128  # resolved, beside the checkpoint


def test_checkpoint_loads_for_inference(straight, skeleton):
    model, saved_skeleton, ckpt = load_model(straight / "last.pt", skeleton=skeleton)
    assert ckpt["step"] == 2 * N and ckpt["world_size"] == 2 and len(ckpt["data"]) == 2
    maps = model.predict(torch.zeros(1, 3, 128, 128))
    assert maps.shape == (1, skeleton.num_channels, 32, 32) and torch.isfinite(maps).all()
    # `model` holds the averaged weights, `train_model` the ones training goes on from
    live, averaged = ckpt["train_model"], ckpt["model"]
    assert ckpt["ema_updates"] == 2 * N and live.keys() == averaged.keys()
    assert torch.equal(model.state_dict()["outs.0.0.weight"], averaged["outs.0.0.weight"])
    assert not torch.equal(live["outs.0.0.weight"], averaged["outs.0.0.weight"])


@pytest.mark.skipif(not (ROOT / "eval.py").exists(), reason="eval.py is not in the repo yet")
def test_checkpoint_evaluates_in_eval_py(straight, sample_shards, tmp_path):
    proc = run_tool("eval.py", "--weights", straight / "last.pt", "--shards", sample_shards["val"],
                    "--limit", "4", "--device", "cpu", "--out", tmp_path / "results.json", "--json")
    assert '"AP"' in proc.stdout.strip().splitlines()[-1]


def test_sigterm_then_resume_gives_the_straight_runs_weights(straight, sample_shards, tmp_path):
    """SIGTERM after a step or two; the checkpoint it leaves resumes to exactly the straight run."""
    config = write_config(tmp_path, log_every=1)  # (log_every does not change the training)
    out = tmp_path / "out"
    proc = popen(torchrun_args(config, sample_shards["train"], out, "--max-steps", 2 * N))
    try:
        deadline = time.monotonic() + 120
        while not logged(out, "train"):
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both workers
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stop = records(out, "stop")[-1]
    assert stop["reason"] == "stopped by SIGTERM", stderr[-3000:]
    ckpt = load_checkpoint(out / "last.pt")
    assert 1 <= ckpt["step"] == stop["step"] < 2 * N
    assert records(out, "checkpoint")[-1]["ranks_identical"] is True

    torchrun(config, sample_shards["train"], out, "--max-steps", 2 * N, "--resume")
    assert [r["step"] for r in records(out, "start")] == [0, ckpt["step"]]
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(out / "last.pt")
    assert a["step"] == b["step"] == 2 * N and a["data"] == b["data"]
    for weights in ("model", "train_model"):  # averaged and live
        for name, value in a[weights].items():
            assert torch.equal(value, b[weights][name]), (weights, name)
    for i, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][i][key]), (i, key)


def test_non_finite_streak_stops_and_keeps_the_last_good_checkpoint(sample_shards, tmp_path):
    # a rate of 1e30 blows the weights up in one step; every later loss is NaN
    config = write_config(tmp_path, **{"optim.lr_per_process": 1.0e30, "optim.warmup_epochs": 0,
                                       "optim.grad_clip": 0.0}, max_bad_steps=3, checkpoint_every=1, log_every=1)
    out = tmp_path / "out"
    proc = run_tool("train_ddp.py", "--config", config, "--shards", sample_shards["train"], "--out", out,
                    "--max-steps", 50, check=False, env=ENV)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "3 steps in a row" in lines[0] and "last.pt (step 1)" in lines[0]
    assert load_checkpoint(out / "last.pt")["step"] == 1
    assert records(out, "train")[-1]["bad_steps"] == 3


def test_corrupt_checkpoint_is_refused_with_one_line(sample_shards, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "last.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    proc = run_tool("train_ddp.py", "--config", write_config(tmp_path), "--shards", sample_shards["train"],
                    "--out", out, "--resume", check=False, env=ENV)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "last.pt" in proc.stderr, proc.stderr
    assert (out / "last.pt").read_bytes() == b"PK\x03\x04 not really a checkpoint"


def test_weights_only_checkpoint_cannot_be_resumed(straight, sample_shards, tmp_path):
    ckpt = load_checkpoint(straight / "last.pt")
    out = tmp_path / "out"
    save_checkpoint({k: ckpt[k] for k in ("model", "model_config", "skeleton", "input_size")}, out / "last.pt")
    proc = run_tool("train_ddp.py", "--config", write_config(tmp_path), "--shards", sample_shards["train"],
                    "--out", out, "--resume", check=False, env=ENV)
    assert proc.returncode == 2 and "weights only" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_existing_run_is_not_overwritten_without_resume(straight, sample_shards, tmp_path):
    before = (straight / "last.pt").stat().st_mtime_ns
    proc = run_tool("train_ddp.py", "--config", write_config(tmp_path), "--shards", sample_shards["train"],
                    "--out", straight, check=False, env=ENV)
    assert proc.returncode == 2 and "--resume" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert (straight / "last.pt").stat().st_mtime_ns == before


@pytest.mark.parametrize("changes, word", [({"optim.lr": 0.1}, "lr"), ({"amp": "fp8"}, "amp"),
                                           ({"pipeline.batch": 4}, "batch")])
def test_bad_config_is_one_line(sample_shards, tmp_path, changes, word):
    proc = run_tool("train_ddp.py", "--config", write_config(tmp_path, **changes), "--shards",
                    sample_shards["train"], "--out", tmp_path / "out", check=False, env=ENV)
    assert proc.returncode == 2 and word in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out").exists()
