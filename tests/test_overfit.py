"""What train_ddp.py learns is what eval.py finds.

The overfit recipe (configs/overfit.yaml), trained for one to three minutes with torchrun on 2
processes on a few sample images and validated on them, then scored by the real eval.py command
line on those same images: AP well above chance (0) where a model tied to another frame than
eval.py's scored 0.01 (issue 11). Validation during training is eval.py's code: its AP for
best.pt is what eval.py prints for best.pt. The log draws as a PNG.

The images are the first of the sample's train split, by image id, that have labelled people:
not chosen for being easy.
"""
import json
import os
import subprocess

import cv2
import pytest

from conftest import ROOT, SAMPLE, run_tool
from model.checkpoint import load_checkpoint
from tests.runs import ENV, records, torchrun_args

IMAGES = 8      # few enough to overfit in a couple of minutes on 2 cores
STEPS = 120     # 1 to 3 minutes on 2 cores (AP 0.38 at 100 steps, 0.53 at 150 in a trial)
AP_FLOOR = 0.3


@pytest.fixture(scope="module")
def few_shards(tmp_path_factory):
    """Shards (and their ground-truth json) of the first IMAGES train images with labelled people."""
    folder = tmp_path_factory.mktemp("few")
    data = json.loads((SAMPLE / "annotations" / "person_keypoints_train2017.json").read_text())
    keep = set(sorted({a["image_id"] for a in data["annotations"] if a.get("num_keypoints", 0) > 0})[:IMAGES])
    data["images"] = [im for im in data["images"] if im["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    annotations = folder / "few.json"
    annotations.write_text(json.dumps(data))
    run_tool("tools/make_shards.py", "--images", SAMPLE / "train2017", "--annotations", annotations,
             "--out", folder / "shards", "--split", "few")
    return folder / "shards"


@pytest.fixture(scope="module")
def trained(few_shards, tmp_path_factory):
    """The recipe for STEPS steps on 2 processes, validated on its own images -> output folder."""
    out = tmp_path_factory.mktemp("overfit") / "out"
    cmd = torchrun_args(ROOT / "configs" / "overfit.yaml", few_shards, out, "--val-shards", few_shards,
                        "--max-steps", STEPS)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, **ENV})
    assert proc.returncode == 0, f"exit {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    return out


def eval_py(weights, shards) -> dict:
    proc = run_tool("eval.py", "--weights", weights, "--shards", shards, "--device", "cpu", "--json")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_eval_py_finds_what_training_learned(trained, few_shards):
    found = eval_py(trained / "last.pt", few_shards)
    assert found["images"] == IMAGES
    assert found["AP"] >= AP_FLOOR, found


def test_validation_is_eval_py_and_keeps_the_best(trained, few_shards):
    vals = records(trained, "val")
    assert [v["step"] for v in vals] == [50, 100, STEPS]  # every val_every (50) and at the end
    assert all(v["images"] == IMAGES and v["seconds"] > 0 for v in vals)
    best = max(vals, key=lambda v: v["AP"])
    saved = load_checkpoint(trained / "best.pt")
    assert saved["step"] == best["step"] and saved["val"]["AP"] == best["AP"]
    assert [v["best"] for v in vals] == [v["AP"] > max([-1] + [u["AP"] for u in vals[:i]])
                                         for i, v in enumerate(vals)]
    # each rank ran its share in batches of its own; an image's maps do not depend on its batch
    # (evaluation.inference.predict_maps), so eval.py gets the same maps up to float rounding
    assert abs(eval_py(trained / "best.pt", few_shards)["AP"] - best["AP"]) <= 0.005


def test_curves_draw_the_run(trained, tmp_path):
    picture = tmp_path / "curves.png"
    run_tool("tools/plot_log.py", trained / "log.jsonl", "--out", picture)
    image = cv2.imread(str(picture))
    assert image is not None and image.shape[0] > 400 and image.shape[1] > 800


def test_plot_log_refuses_what_is_not_a_log(tmp_path):
    for name, text in (("missing.jsonl", None), ("bad.jsonl", "not json\n{}\n"), ("empty.jsonl", "")):
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        proc = run_tool("tools/plot_log.py", path, "--out", tmp_path / "x.png", check=False)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (tmp_path / "x.png").exists()


def test_unusable_val_shards_stop_before_training(few_shards, tmp_path, sample_dir):
    """Missing, empty or other-skeleton val shards: one line, exit 2, nothing written."""
    from shards.writer import write_manifest
    empty = tmp_path / "empty"
    empty.mkdir()
    write_manifest(empty, {"shards": [], "keypoint_names": [str(k) for k in range(17)]})
    other = tmp_path / "other"
    other.mkdir()
    write_manifest(other, {"shards": [], "keypoint_names": [str(k) for k in range(14)]})
    for val, problem in ((tmp_path / "nowhere", "not found"), (empty, "no samples"), (other, "14 keypoints")):
        out = tmp_path / f"out-{val.name}"
        proc = run_tool("train_ddp.py", "--config", "configs/overfit.yaml", "--shards", few_shards,
                        "--val-shards", val, "--out", out, "--max-steps", "1", check=False, env=ENV)
        assert proc.returncode == 2 and problem in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()
