"""demo.py on images, folders and videos; its user errors; the README quickstart at a small size."""
import json

import cv2
import pytest
import yaml

from conftest import SAMPLE, run_tool
from core.skeleton import COCO_SKELETON

IMAGE = SAMPLE / "val2017" / "000000214753.jpg"


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The quickstart's real command lines, with 6 training steps instead of minutes."""
    out = tmp_path_factory.mktemp("quickstart")
    proc = run_tool("tools/quickstart.py", "--steps", "6", "--out", out, timeout=900)
    return out, proc.stdout


def test_quickstart_leaves_every_output_it_announces(quickstart):
    out, stdout = quickstart
    for name in ("shards/train/manifest.json", "shards/val/manifest.json", "train/last.pt", "train/best.pt",
                 "train/log.jsonl", "metrics.json", "curves.png", "demo.jpg", "demo.json"):
        assert (out / name).is_file(), name
        assert str(out / name.split("/")[0]) in stdout or name.startswith("shards")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["images"] == 28 and metrics["val"]["images"] == 31
    assert all(0 <= m["AP"] <= 1 for m in metrics.values())
    assert "images it trained on" in stdout and "poor skeletons" in stdout
    assert cv2.imread(str(out / "curves.png")) is not None


def test_demo_draws_and_writes_coco_keypoints(quickstart, tmp_path):
    out, _ = quickstart
    picture = tmp_path / "pose.jpg"
    proc = run_tool("demo.py", "--weights", out / "train" / "last.pt", "--input", IMAGE, "--output", picture,
                    "--json", "--threshold", "0")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    drawn, original = cv2.imread(str(picture)), cv2.imread(str(IMAGE))
    assert drawn.shape == original.shape
    people = json.loads((tmp_path / "pose.json").read_text())["items"][0]["people"]
    assert len(people) == summary["people"]
    if people:  # drawn where people were found
        assert (cv2.absdiff(drawn, original) > 40).any()
        assert all(len(p["keypoints"]) == 17 and 0 <= p["score"] for p in people)


def test_demo_on_a_folder_and_a_video(quickstart, tmp_path):
    out, _ = quickstart
    weights = out / "train" / "last.pt"
    folder = tmp_path / "images"
    folder.mkdir()
    frames = [cv2.resize(cv2.imread(str(p)), (320, 240)) for p in sorted((SAMPLE / "val2017").glob("*.jpg"))[:3]]
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i}.jpg"), f)
    run_tool("demo.py", "--weights", weights, "--input", folder, "--output", tmp_path / "drawn", "--json")
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["0.jpg", "1.jpg", "2.jpg", "people.json"]

    video = tmp_path / "clip.mp4"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (320, 240))
    for f in frames:
        w.write(f)
    w.release()
    proc = run_tool("demo.py", "--weights", weights, "--input", video, "--output", tmp_path / "drawn.mp4",
                    "--json", "--max-frames", "2")
    assert "frames/s" in proc.stdout
    cap = cv2.VideoCapture(str(tmp_path / "drawn.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    assert len(json.loads((tmp_path / "drawn.json").read_text())["items"]) == 2


@pytest.mark.parametrize("case", ["missing_input", "empty_folder", "unreadable_image", "missing_weights",
                                  "other_skeleton"])
def test_demo_user_errors(quickstart, tmp_path, case):
    out, _ = quickstart
    weights, source, extra = out / "train" / "last.pt", IMAGE, []
    if case == "missing_input":
        source = tmp_path / "nothing.jpg"
    elif case == "empty_folder":
        source = tmp_path / "empty"
        source.mkdir()
    elif case == "unreadable_image":
        source = tmp_path / "broken.jpg"
        source.write_bytes(b"not an image")
    elif case == "missing_weights":
        weights = tmp_path / "none.pt"
    elif case == "other_skeleton":
        data = yaml.safe_load(COCO_SKELETON.read_text())
        data["name"] = "coco_no_redundant_limbs"
        data["limbs"] = data["limbs"][:21]
        (tmp_path / "other.yaml").write_text(yaml.safe_dump(data))
        extra = ["--skeleton", tmp_path / "other.yaml"]
    proc = run_tool("demo.py", "--weights", weights, "--input", source, "--output", tmp_path / "o.jpg", *extra,
                    check=False)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.jpg").exists()
