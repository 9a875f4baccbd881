"""make_shards: round trip through webdataset and DALI, resume, bad images, exit-2 cases."""
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from conftest import SAMPLE, run_tool
from shards import build
from shards.reader import iter_samples
from shards.integrity import sha256_file

TRAIN_JSON = SAMPLE / "annotations" / "person_keypoints_train2017.json"


def _expected(json_path):
    """image id -> (keypoints [P, 17, 3] of people with labelled keypoints, person flag, ignore flag)."""
    coco = COCO(str(json_path))
    out = {}
    for img_id, img in coco.imgs.items():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
        person = np.zeros((img["height"], img["width"]), bool)
        ignore = np.zeros_like(person)
        kpts = []
        for a in anns:
            m = coco.annToMask(a).astype(bool)
            person |= m
            if a["iscrowd"] or a["num_keypoints"] == 0:
                ignore |= m
            else:
                kpts.append(np.asarray(a["keypoints"], np.float32).reshape(17, 3))
        out[img_id] = (np.array(kpts, np.float32).reshape(-1, 17, 3), person, ignore)
    return out


def test_round_trip_webdataset(sample_shards):
    expected = _expected(TRAIN_JSON)
    samples = list(iter_samples(sample_shards["train"]))
    with_people = [i for i, (k, _, _) in expected.items() if len(k)]
    assert sorted(s["image_id"] for s in samples) == sorted(with_people)  # train keeps people only
    assert any(e[2].any() for e in expected.values())  # the sample has crowd/unlabelled regions
    for s in samples:
        kpts, person, ignore = expected[s["image_id"]]
        assert s["jpg"] == (SAMPLE / "train2017" / s["meta"]["file_name"]).read_bytes()
        np.testing.assert_array_equal(s["kpts"], kpts)
        np.testing.assert_array_equal((s["mask"] & 1) > 0, person)
        np.testing.assert_array_equal((s["mask"] & 2) > 0, ignore)
        assert len(s["meta"]["persons"]) == len(kpts)


def test_round_trip_dali_cpu_with_index(sample_shards):
    from nvidia.dali import fn, pipeline_def, types

    folder = sample_shards["train"]
    manifest = json.loads((folder / "manifest.json").read_text())
    tars = [str(folder / s["name"]) for s in manifest["shards"]]
    idxs = [str(folder / s["index"]) for s in manifest["shards"]]
    n = sum(s["samples"] for s in manifest["shards"])

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def read():
        return tuple(fn.readers.webdataset(paths=tars, index_paths=idxs, ext=["jpg", "kpts", "mask.png", "json"],
                                     dtypes=[types.UINT8, types.FLOAT, types.UINT8, types.UINT8],
                                     missing_component_behavior="error"))

    pipe = read()
    pipe.build()
    by_id = {s["image_id"]: s for s in iter_samples(folder)}
    expected = _expected(TRAIN_JSON)
    seen = set()
    for _ in range(n):
        jpg, kpts, mask, meta = (np.array(o[0]) for o in pipe.run())
        meta = json.loads(meta.tobytes())
        seen.add(meta["image_id"])
        assert jpg.tobytes() == (SAMPLE / "train2017" / meta["file_name"]).read_bytes()
        np.testing.assert_array_equal(kpts.reshape(-1, 17, 3), expected[meta["image_id"]][0])
        np.testing.assert_array_equal(cv2.imdecode(mask, cv2.IMREAD_UNCHANGED), by_id[meta["image_id"]]["mask"])
    assert seen == set(by_id)


def test_val_split_keeps_every_image(sample_shards):
    manifest = json.loads((sample_shards["val"] / "manifest.json").read_text())
    n_images = len(json.loads((SAMPLE / "annotations" / "person_keypoints_val2017.json").read_text())["images"])
    assert manifest["summary"]["samples"] == n_images
    for s in manifest["shards"]:
        assert s["bytes"] <= 2 * 2**20 or s["samples"] == 1  # under --shard-size 2 (MB)
        assert s["sha256"] == sha256_file(sample_shards["val"] / s["name"])


def _straight_run(tmp_path):
    out = tmp_path / "straight"
    build.make_shards(SAMPLE / "train2017", TRAIN_JSON, out, split="train", shard_size_mb=1, workers=1,
                      progress=False)
    return {p.name: sha256_file(p) for p in out.glob("*.tar")}


def test_resume_after_interruption_writes_only_missing(tmp_path, monkeypatch):
    straight = _straight_run(tmp_path)
    assert len(straight) >= 3
    out = tmp_path / "resumed"

    real = build.coco.build_sample
    calls = {"n": 0}

    def dies_midway(*a, **k):  # the process is killed after some images
        calls["n"] += 1
        if calls["n"] > 12:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(build.coco, "build_sample", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        build.make_shards(SAMPLE / "train2017", TRAIN_JSON, out, split="train", shard_size_mb=1, workers=1,
                          progress=False)
    monkeypatch.setattr(build.coco, "build_sample", real)
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert first and len(first) < len(straight)
    assert not list(out.glob("*.tar.tmp"))  # nothing half-written under a final name...
    assert all(straight[n] == sha256_file(out / n) for n in first)  # ...and what is there is whole

    build.make_shards(SAMPLE / "train2017", TRAIN_JSON, out, split="train", shard_size_mb=1, workers=1,
                      progress=False)
    after = {p.name: sha256_file(p) for p in out.glob("*.tar")}
    assert after == straight
    assert all((out / n).stat().st_mtime_ns == t for n, t in first.items())  # kept, not rewritten

    # a deleted and a damaged shard: only those two are written again
    names = sorted(after)
    (out / names[0]).unlink()
    with open(out / names[1], "r+b") as f:
        f.seek(1000)
        f.write(b"garbage")
    before = {n: (out / n).stat().st_mtime_ns for n in names[2:]}
    build.make_shards(SAMPLE / "train2017", TRAIN_JSON, out, split="train", shard_size_mb=1, workers=1,
                      progress=False)
    assert {p.name: sha256_file(p) for p in out.glob("*.tar")} == straight
    assert all((out / n).stat().st_mtime_ns == t for n, t in before.items())


def _bad_inputs(tmp_path):
    """Five real images and their json, with a missing, a truncated, a png-named-jpg, a wrong size,
    a keypoint outside the image and an annotation without keypoints."""
    data = json.loads(TRAIN_JSON.read_text())
    ids = sorted({a["image_id"] for a in data["annotations"] if a["num_keypoints"] > 0})[:6]
    data["images"] = [im for im in data["images"] if im["id"] in ids]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    images = tmp_path / "images"
    images.mkdir()
    for im in data["images"]:
        shutil.copy(SAMPLE / "train2017" / im["file_name"], images / im["file_name"])
    missing, truncated, png, resized, outside, broken = data["images"]
    (images / missing["file_name"]).unlink()
    raw = (images / truncated["file_name"]).read_bytes()
    (images / truncated["file_name"]).write_bytes(raw[: len(raw) // 2])
    img = cv2.imread(str(images / png["file_name"]))
    (images / png["file_name"]).write_bytes(cv2.imencode(".png", img)[1].tobytes())
    resized["width"] += 10
    ann = next(a for a in data["annotations"] if a["image_id"] == outside["id"] and a["num_keypoints"] > 0)
    j = next(i for i in range(17) if ann["keypoints"][3 * i + 2] > 0)
    ann["keypoints"][3 * j] = outside["width"] + 50.0
    ann_broken = next(a for a in data["annotations"] if a["image_id"] == broken["id"])
    del ann_broken["keypoints"]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return images, path, (missing, truncated, png, resized, outside, broken)


def test_bad_images_are_reported_and_do_not_stop_the_run(tmp_path):
    images, ann, (missing, truncated, png, resized, outside, broken) = _bad_inputs(tmp_path)
    out = tmp_path / "out"
    proc = run_tool("tools/make_shards.py", "--images", images, "--annotations", ann, "--out", out,
                    "--split", "train", "--workers", "2")
    assert "2 image(s) skipped" in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    reports = manifest["images"]
    key = build.key_of
    assert "cannot read" in reports[key(missing)]["skip"]
    assert "truncated" in reports[key(truncated)]["skip"]
    assert "png" in reports[key(png)]["notes"][0] and not reports[key(png)].get("skip")
    assert "decoded size used" in reports[key(resized)]["notes"][0]
    assert reports[key(outside)]["counts"]["keypoints_outside_image"] == 1
    assert reports[key(broken)]["counts"]["annotations_missing_fields"] == 1
    s = manifest["summary"]
    assert (s["samples"], s["skipped"]) == (4, 2)
    got = {x["image_id"]: x for x in iter_samples(out)}
    assert got[png["id"]]["jpg"][:4] == b"\x89PNG"  # kept byte for byte
    assert got[resized["id"]]["meta"]["width"] == resized["width"] - 10
    k = got[outside["id"]]["kpts"]
    assert (k[..., 0] < resized["width"] + 1000).all() and (k[..., 2] >= 0).all()
    assert not (k[..., 0] >= outside["width"]).any()  # the outside keypoint became unlabelled


@pytest.mark.parametrize("case", ["missing_json", "bad_json", "not_coco", "unwritable_out", "no_images"])
def test_user_errors_exit_2_and_write_nothing(tmp_path, case):
    ann, images, out = TRAIN_JSON, SAMPLE / "train2017", tmp_path / "out"
    if case == "missing_json":
        ann = tmp_path / "nope.json"
    elif case == "bad_json":
        ann = tmp_path / "bad.json"
        ann.write_text("{not json")
    elif case == "not_coco":
        ann = tmp_path / "list.json"
        ann.write_text("[1, 2]")
    elif case == "unwritable_out":
        blocker = tmp_path / "a_file"
        blocker.write_text("")
        out = blocker / "out"
    elif case == "no_images":
        images = tmp_path / "no_such_folder"
    proc = run_tool("tools/make_shards.py", "--images", images, "--annotations", ann, "--out", out, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()
