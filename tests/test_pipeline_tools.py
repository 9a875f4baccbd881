"""tools/show_targets.py and tools/bench_pipeline.py as a user runs them, and the benchmark's
classic baseline doing the same work as the pipeline."""
import json

import cv2
import numpy as np
import pytest
import torch

from conftest import load_tool, run_tool
from pipelines.config import PipelineConfig
from pipelines.loader import make_loader


def test_show_targets_writes_one_sheet_per_sample(sample_shards, tmp_path):
    out = tmp_path / "sheets"
    proc = run_tool("tools/show_targets.py", "--shards", sample_shards["train"], "--out", out, "--count", "3",
                    "--json")
    sheets = json.loads(proc.stdout.strip().splitlines()[-1])["sheets"]
    assert sorted(p.name for p in out.iterdir()) == ["sample-000.png", "sample-001.png", "sample-002.png"]
    assert sheets == [str(out / f"sample-{i:03d}.png") for i in range(3)]
    image = cv2.imread(sheets[0])
    assert image.shape == (512, 4 * 512, 3)  # four panels at the input size
    assert image[:, 512:1024].std() > 10     # something is drawn


@pytest.mark.parametrize("args, message", [
    (["--shards", "{tmp}/none", "--out", "{tmp}/o"], "shards folder not found"),
    (["--shards", "{train}", "--out", "{tmp}/o", "--count", "0"], "--count"),
    (["--shards", "{train}", "--out", "{tmp}/o", "--config", "{tmp}/missing.yaml"], "no such config file"),
])
def test_show_targets_user_errors_exit_2_with_one_line(sample_shards, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, train=sample_shards["train"]) for a in args]
    proc = run_tool("tools/show_targets.py", *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_bench_pipeline_reports_both_loaders_as_json(sample_shards):
    proc = run_tool("tools/bench_pipeline.py", "--shards", sample_shards["train"], "--device", "cpu",
                    "--batch-size", "4", "--steps", "3", "--warmup", "1", "--rounds", "2", "--workers", "1", "--input-size", "128",
                    "--json")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["dali_images_per_s"] > 0 and result["classic_images_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["dali_images_per_s"] / result["classic_images_per_s"])
    assert result["device"] == "cpu" and result["batch_size"] == 4
    assert result["images"] == 28 and result["batches_per_epoch"] == 7 and len(result["runs"]) == 1


@pytest.mark.slow
def test_bench_pipeline_times_datasets_of_several_sizes_in_one_run(sample_shards):
    """--sizes: 5 images (an epoch every batch of 4) and 40 (the sample's 28, some twice)."""
    proc = run_tool("tools/bench_pipeline.py", "--shards", sample_shards["train"], "--device", "cpu",
                    "--batch-size", "4", "--steps", "3", "--warmup", "1", "--rounds", "1", "--workers", "1",
                    "--input-size", "64", "--sizes", "5", "40", "--json")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [(r["images"], r["batches_per_epoch"]) for r in result["runs"]] == [(5, 1), (40, 10)]
    assert all(r["dali_images_per_s"] > 0 and r["ratio"] > 0 for r in result["runs"])
    assert "ratio" not in result  # several datasets: their figures only under "runs"


def test_bench_pipeline_user_errors_exit_2(tmp_path):
    for args, message in ((["--shards", tmp_path / "none"], "not found"),
                          (["--shards", tmp_path, "--steps", "0"], "--steps"),
                          (["--shards", tmp_path, "--sizes", "3"], "--sizes")):
        proc = run_tool("tools/bench_pipeline.py", *args, check=False)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_classic_baseline_renders_the_same_targets(sample_shards, skeleton):
    """The benchmark compares like with like: the classic per-sample NumPy renderer gives the
    pipeline's targets for the pipeline's own keypoints and masks."""
    bench = load_tool("bench_pipeline")
    cfg = PipelineConfig(input_size=256, batch_size=4, num_threads=2)
    with make_loader(sample_shards["train"], cfg, skeleton) as loader:
        batch = next(iter(loader))
    for kp, masks, targets in zip(batch["keypoints"], batch["masks"], batch["targets"]):
        classic = bench.classic_targets(kp.numpy(), masks[1].numpy(), skeleton, cfg.targets)
        assert np.abs(classic - targets.numpy()).max() < 1e-5


def test_classic_dataset_item_matches_the_batch_contract(sample_shards, skeleton):
    bench = load_tool("bench_pipeline")
    cfg = PipelineConfig(input_size=128, batch_size=2, max_people=5)
    item = bench.ClassicDataset(bench.read_raw(sample_shards["train"]), cfg, skeleton)[3]
    assert item["images"].shape == (3, 128, 128) and item["keypoints"].shape == (5, skeleton.num_keypoints, 3)
    assert item["masks"].shape == (2, 32, 32) and item["targets"].shape == (skeleton.num_channels, 32, 32)
    assert all(v.dtype == torch.float32 for v in item.values())


def test_profile_pipeline_splits_the_cpu_time_by_stage(sample_shards):
    proc = run_tool("tools/profile_pipeline.py", "--shards", sample_shards["train"], "--batch-size", "4",
                    "--batches", "2", "--input-size", "64", "--workers", "1", "--json")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    stages = result["cpu_ms_per_image"]
    assert list(stages) == ["read", "decode", "augment", "collate", "targets"]
    assert stages["decode"] > 0 and stages["targets"] > 0
    assert result["total_cpu_ms_per_image"] == pytest.approx(sum(stages.values()), abs=0.01)
