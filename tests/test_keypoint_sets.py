"""Keypoint sets beyond COCO, end to end on the COCO sample.

CrowdPose- and AI Challenger-like jsons are made from the sample's val json (COCO's 12 limb
keypoints kept, head and neck placed from the face and shoulders, boxes only; CrowdPose's with
crowdIndex), plus the README's upper-body set. For each skeleton: shards -> the targets of what
they hold (ideal maps) -> grouping -> COCOeval with the set's sigmas must reach AP 0.95; two
training steps and one eval run; and every reader refuses data of another skeleton with one line.
The commands run in this process (tests/commands.py), which spares CI an interpreter start per
command.
"""
import json

import numpy as np
import pytest
import torch
import yaml
from pycocotools import mask as mask_utils

from conftest import ROOT, SAMPLE
from core.errors import UserError
from core.skeleton import SKELETONS, load_skeleton
from evaluation.coco import coco_from_dict, evaluate_keypoints, gt_results, load_coco
from evaluation.crowdpose import crowd_split, split_images
from evaluation.ideal import group_truth, shard_truth
from evaluation.sources import gt_from_samples
from grouping import GroupingConfig
from shards.build import make_shards
from shards.coco import IGNORE, PERSON
from shards.keypoint_sets import convert, crowd_index_of
from shards.reader import iter_samples
from tests.commands import run_main
from tests.readme import blocks, section
from tests.runs import write_config

VAL_JSON = SAMPLE / "annotations" / "person_keypoints_val2017.json"
CROWD_BOX = [10.0, 20.0, 60.0, 40.0]  # a crowd region added to the first image (the val json has none)


@pytest.fixture(scope="module")
def sets(tmp_path_factory, sample_shards):
    """{name: (skeleton, json path, shards folder)}: the sample's val images with each keypoint set."""
    out = tmp_path_factory.mktemp("keypoint_sets")
    source = json.loads(VAL_JSON.read_text())
    upper = out / "upper_body.yaml"
    upper.write_text(blocks(section("Your own keypoints"), "yaml")[0])
    found = {"coco": (load_skeleton(), VAL_JSON, sample_shards["val"])}
    for name, path in (("crowdpose", SKELETONS / "crowdpose.yaml"), ("aic", SKELETONS / "aic.yaml"),
                       ("upper_body", upper)):
        skeleton = load_skeleton(path)
        data = convert(json.loads(json.dumps(source)), skeleton, str(VAL_JSON), boxes_only=name != "upper_body",
                       crowd_index=name == "crowdpose")
        if name == "aic":  # AI Challenger's own OKS scale is the box's area
            for ann in data["annotations"]:
                ann["area"] = ann["bbox"][2] * ann["bbox"][3]
        if name == "crowdpose":
            first = data["images"][0]["id"]
            data["annotations"].append({"id": 10**9, "image_id": first, "category_id": 1, "iscrowd": 1,
                                        "bbox": CROWD_BOX, "keypoints": [0] * 42, "num_keypoints": 0})
        json_path = out / f"{name}.json"
        json_path.write_text(json.dumps(data))
        make_shards(SAMPLE / "val2017", json_path, out / name, split="val", workers=1, progress=False,
                    skeleton=skeleton)
        found[name] = (skeleton, json_path, out / name)
    return found


# -- the data --------------------------------------------------------------------------------

def test_converted_sets_keep_the_limb_keypoints_and_place_head_and_neck(sets):
    coco = json.loads(VAL_JSON.read_text())
    names = coco["categories"][0]["keypoints"]
    skeleton, path, _ = sets["crowdpose"]
    data = json.loads(path.read_text())
    assert data["categories"][0]["keypoints"] == list(skeleton.keypoints)
    for src, ann in zip(coco["annotations"], data["annotations"]):
        s, k = np.reshape(src["keypoints"], (-1, 3)), np.reshape(ann["keypoints"], (-1, 3))
        for i, name in enumerate(skeleton.keypoints[:12]):  # the 12 limb keypoints: copied
            np.testing.assert_array_equal(k[i], s[names.index(name)])
        ls, rs = s[names.index("left_shoulder")], s[names.index("right_shoulder")]
        neck = k[skeleton.index("neck")]
        if ls[2] and rs[2]:
            np.testing.assert_allclose(neck[:2], (ls[:2] + rs[:2]) / 2, atol=0.01)
        else:
            assert not neck[2]
        assert bool(k[skeleton.index("head")][2]) == bool(s[:5, 2].any())  # from the face
        assert "segmentation" not in ann and "area" not in ann
    assert {im["id"]: im["crowdIndex"] for im in data["images"]}.keys() == {im["id"] for im in coco["images"]}
    # CrowdPose's crowdIndex: other people's keypoints in a person's box over its own, averaged
    one = np.array([[10, 10, 2], [20, 20, 2]], float)
    other = np.array([[15, 15, 2], [90, 90, 2]], float)
    assert crowd_index_of([one, other], [[0, 0, 30, 30], [5, 5, 80, 80]]) == pytest.approx((1 / 2 + 2 / 2) / 2)


def test_a_keypoint_that_cannot_be_placed_is_a_clear_error():
    data = json.loads(VAL_JSON.read_text())
    tail = load_skeleton(SKELETONS / "coco.yaml").to_dict()
    tail.update(name="tailed", keypoints=tail["keypoints"] + ["tail"], sigmas=tail["sigmas"] + [0.1])
    from core.skeleton import skeleton_from_dict
    with pytest.raises(UserError, match="has no keypoint 'tail' of the skeleton 'tailed'"):
        convert(data, skeleton_from_dict(tail), "val.json")


def test_shards_record_their_skeleton_and_boxes_stand_for_missing_segmentations(sets):
    skeleton, path, shards = sets["crowdpose"]
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["skeleton"] == {"name": "crowdpose", "num_keypoints": 14}
    gt = load_coco(path)
    crowd_seen = False
    for s in iter_samples(shards):
        assert s["kpts"].shape[1:] == (14, 3) and "crowdIndex" in s["meta"]
        h, w = s["mask"].shape
        person, ignore = np.zeros((h, w), bool), np.zeros((h, w), bool)
        for ann in gt.loadAnns(gt.getAnnIds(imgIds=[s["image_id"]])):
            box = mask_utils.decode(mask_utils.frPyObjects(np.array([ann["bbox"]], float), h, w)[0]) > 0
            person |= box
            if ann["iscrowd"] or ann["num_keypoints"] == 0:  # crowds and unlabelled people: ignored
                ignore |= box
                crowd_seen |= bool(ann["iscrowd"])
        np.testing.assert_array_equal((s["mask"] & PERSON) > 0, person)
        np.testing.assert_array_equal((s["mask"] & IGNORE) > 0, ignore)
    assert crowd_seen


# -- shards -> targets -> grouping -> COCOeval ------------------------------------------------

@pytest.fixture
def one_thread():
    """Small tensors: one torch thread, as tools/gt_upper_bound.py groups (more only contend)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["coco", "crowdpose", "aic", "upper_body"])
def test_ideal_maps_from_shards_score_ap_095_with_the_sets_sigmas(sets, name, one_thread):
    skeleton, path, shards = sets[name]
    results, _ = group_truth(shard_truth(shards), skeleton, GroupingConfig(), 512, progress=False)
    gt = load_coco(path)
    stats = evaluate_keypoints(gt, results, gt.getImgIds(), skeleton.sigmas)
    assert stats["AP"] >= 0.95, stats
    split = crowd_split(gt, results, gt.getImgIds(), skeleton.sigmas)
    if name != "crowdpose":
        assert split == {}
        return
    assert sum(split[f"images_{g}"] for g in ("easy", "medium", "hard")) == len(gt.getImgIds())
    assert split["AP_easy"] >= 0.95
    # from shards alone (no json): crowdIndex survives, the split is the same
    rebuilt = gt_from_samples({s["image_id"]: (s["kpts"], s["meta"]) for s in iter_samples(shards)})
    assert crowd_split(rebuilt, gt_results(rebuilt), rebuilt.getImgIds(), skeleton.sigmas)["images_easy"] \
        == split["images_easy"]


def test_crowd_split_follows_crowdposes_toolkit(sets):
    assert split_images({1: 0.0, 2: 0.19, 3: 0.2, 4: 0.79, 5: 0.8, 6: 1.0}) == \
        {"easy": [1, 2], "medium": [3, 4], "hard": [5, 6]}
    skeleton, path, _ = sets["crowdpose"]
    data = json.loads(path.read_text())
    for im, value in zip(data["images"], [0.0, 0.5, 0.9] * 20):
        im["crowdIndex"] = value
    gt = coco_from_dict(data)
    truth = gt_results(gt)
    ids = sorted(gt.getImgIds())
    split = crowd_split(gt, truth[1:], ids, skeleton.sigmas)  # one person missed
    for group, members in split_images({i: gt.imgs[i]["crowdIndex"] for i in ids}).items():
        expected = evaluate_keypoints(gt, [r for r in truth[1:] if r["image_id"] in members], members,
                                      skeleton.sigmas)["AP"]
        assert split[f"AP_{group}"] == pytest.approx(expected) and split[f"images_{group}"] == len(members)
    assert min(split["AP_easy"], split["AP_medium"], split["AP_hard"]) < 1.0
    # areas: CrowdPose has none, so OKS takes 0.53 x the box, as its toolkit does
    ann = next(a for a in gt.dataset["annotations"] if a["num_keypoints"])
    assert ann["area"] == pytest.approx(0.53 * ann["bbox"][2] * ann["bbox"][3])


# -- training and eval with each skeleton ----------------------------------------------------

@pytest.mark.parametrize("name", ["crowdpose", "aic"])
def test_two_training_steps_and_an_eval(sets, name, tmp_path):
    skeleton, path, shards = sets[name]
    config = write_config(tmp_path, **{"pipeline.input_size": 64, "pipeline.batch_size": 2})
    skeleton_file = SKELETONS / f"{name}.yaml"
    status, _, err = run_main("train_ddp.py", "--config", config, "--skeleton", skeleton_file,
                              "--shards", shards, "--out", tmp_path / "out", "--max-steps", 2, "--device", "cpu")
    assert status == 0, err
    ckpt = torch.load(tmp_path / "out" / "last.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["skeleton"] == skeleton.to_dict()
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["skeleton"] == str(skeleton_file)
    status, out, err = run_main("eval.py", "--weights", tmp_path / "out" / "last.pt", "--skeleton",
                                skeleton_file, "--shards", shards, "--limit", 3, "--device", "cpu", "--json")
    assert status == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["skeleton"] == name and summary["images"] == 3 and 0 <= summary["AP"] <= 1
    has_split = {"AP_easy", "AP_medium", "AP_hard"} <= summary.keys()
    assert has_split == (name == "crowdpose") and ("CrowdPose AP by crowding" in out) == has_split


# -- a mismatch is refused ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def crowdpose_weights(tmp_path_factory, sets):
    """A tiny IMHN for the CrowdPose skeleton, random weights: what a checkpoint check needs."""
    from core.config import from_dict, load_yaml, to_dict
    from model.checkpoint import save_checkpoint
    from model.config import ModelConfig
    from model.imhn import IMHN
    skeleton = sets["crowdpose"][0]
    cfg = from_dict(ModelConfig, load_yaml(ROOT / "configs/model/tiny.yaml"), "tiny.yaml")
    path = tmp_path_factory.mktemp("weights") / "crowdpose.pt"
    save_checkpoint({"model": IMHN(cfg, skeleton.num_channels).state_dict(), "model_config": to_dict(cfg),
                     "skeleton": skeleton.to_dict(), "input_size": 64}, path)
    return path


@pytest.mark.parametrize("case", ["json_count", "json_names", "gt_upper_bound", "checkpoint", "eval_shards",
                                  "eval_json", "train_shards", "show_targets"])
def test_a_mismatch_is_refused_with_one_line(sets, crowdpose_weights, tmp_path, case):
    _, crowd_json, crowd_shards = sets["crowdpose"]
    _, aic_json, aic_shards = sets["aic"]
    crowdpose, aic = SKELETONS / "crowdpose.yaml", SKELETONS / "aic.yaml"
    weights = ("--weights", crowdpose_weights, "--device", "cpu")
    command, problem = {
        "json_count": (("tools/make_shards.py", "--images", SAMPLE / "val2017", "--annotations", VAL_JSON,
                        "--skeleton", crowdpose, "--out", tmp_path / "out"), "holds 17 keypoints per person"),
        "json_names": (("tools/make_shards.py", "--images", SAMPLE / "val2017", "--annotations", crowd_json,
                        "--skeleton", aic, "--out", tmp_path / "out"), "keypoint 0 is 'left_shoulder'"),
        "gt_upper_bound": (("tools/gt_upper_bound.py", "--annotations", crowd_json), "the skeleton 'coco'"),
        "checkpoint": (("eval.py", *weights, "--shards", crowd_shards), "was trained for skeleton 'crowdpose'"),
        "eval_shards": (("eval.py", *weights, "--skeleton", crowdpose, "--shards", aic_shards),
                        "shards made for skeleton 'aic'"),
        "eval_json": (("eval.py", *weights, "--skeleton", crowdpose, "--images", SAMPLE / "val2017",
                       "--annotations", aic_json), f"{aic_json} (categories[0].keypoints)"),
        "train_shards": (("train_ddp.py", "--config", ROOT / "configs/tiny.yaml", "--skeleton", crowdpose,
                          "--shards", aic_shards, "--out", tmp_path / "out", "--device", "cpu"),
                         "shards made for skeleton 'aic'"),
        "show_targets": (("tools/show_targets.py", "--shards", crowd_shards, "--out", tmp_path / "out"),
                         "shards made for skeleton 'crowdpose'"),
    }[case]
    status, _, err = run_main(*command)
    assert status == 2 and problem in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written
