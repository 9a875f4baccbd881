"""The skeleton file: COCO's contents, derived keypoints, flips, and clear errors on bad files."""
import dataclasses

import numpy as np
import pytest
import torch
import yaml

from core.config import from_dict
from core.errors import UserError
from core.skeleton import COCO_SKELETON, load_skeleton, skeleton_from_dict


def test_coco_skeleton_matches_simplepose(skeleton):
    assert skeleton.num_dataset == 17 and skeleton.keypoints[17] == "neck"
    assert (skeleton.num_limbs, skeleton.num_channels) == (30, 50)
    names = skeleton.keypoints
    limbs = [(names[a], names[b]) for a, b in skeleton.limbs]
    assert limbs[0] == ("neck", "nose") and limbs[-1] == ("right_hip", "left_hip")
    # mirror limbs swap; right_hip->left_hip is its own mirror image
    flip = skeleton.limb_flip
    assert limbs[flip[limbs.index(("neck", "right_shoulder"))]] == ("neck", "left_shoulder")
    assert limbs[flip[limbs.index(("right_hip", "left_knee"))]] == ("left_hip", "right_knee")
    assert flip[29] == 29


def test_flips_are_involutions(skeleton):
    for perm in (skeleton.flip, skeleton.limb_flip, skeleton.channel_flip()):
        assert sorted(perm) == list(range(len(perm)))
        assert [perm[p] for p in perm] == list(range(len(perm)))


def test_neck_is_the_shoulders_midpoint_only_when_both_are_labelled(skeleton):
    k = np.zeros((2, 17, 3), np.float32)
    ls, rs = skeleton.index("left_shoulder"), skeleton.index("right_shoulder")
    k[0, ls], k[0, rs] = (10, 20, 2), (30, 40, 1)
    k[1, ls] = (10, 20, 2)  # right shoulder unlabelled
    for arr in (k, torch.from_numpy(k)):
        full = skeleton.add_derived(arr)
        assert tuple(full.shape) == (2, 18, 3)
        np.testing.assert_allclose(np.asarray(full[0, 17]), (20, 30, 1))
        np.testing.assert_allclose(np.asarray(full[1, 17]), (0, 0, 0))
        np.testing.assert_array_equal(np.asarray(skeleton.drop_derived(full)), k)


def test_to_dict_round_trips(skeleton):
    assert skeleton_from_dict(skeleton.to_dict()) == skeleton


def _coco():
    return yaml.safe_load(COCO_SKELETON.read_text())


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(colour="red"), "unknown key"),
    (lambda d: d["limbs"].append(["neck", "tail"]), "unknown keypoint 'tail'"),
    (lambda d: d["limbs"].append([3, 99]), "out of range"),
    (lambda d: d["flip_pairs"].pop(), "is not a limb"),  # ankles no longer mirror each other
    (lambda d: d["flip_pairs"].append(["nose", "left_eye"]), "more than one pair"),
    (lambda d: d["sigmas"].pop(), "sigmas"),
    (lambda d: d.pop("limbs"), "missing key 'limbs'"),
])
def test_bad_skeleton_files_are_clear_errors(tmp_path, change, message):
    data = _coco()
    change(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=message) as e:
        load_skeleton(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_custom_skeleton_needs_only_its_yaml(tmp_path):
    data = {"name": "arm", "keypoints": ["l_hand", "r_hand", "l_elbow", "r_elbow"], "derived": {},
            "flip_pairs": [["l_hand", "r_hand"], ["l_elbow", "r_elbow"]],
            "limbs": [["l_elbow", "l_hand"], ["r_elbow", "r_hand"]], "sigmas": [0.06] * 4}
    path = tmp_path / "arm.yaml"
    path.write_text(yaml.safe_dump(data))
    s = load_skeleton(path)
    assert (s.num_keypoints, s.num_limbs, s.num_channels, s.limb_flip) == (4, 2, 8, (1, 0))


@dataclasses.dataclass
class _Inner:
    sigma: float = 1.0


@dataclasses.dataclass
class _Outer:
    size: int = 4
    inner: _Inner = dataclasses.field(default_factory=_Inner)


def test_config_rejects_unknown_keys_and_wrong_types():
    cfg = from_dict(_Outer, {"size": 8, "inner": {"sigma": 2}})
    assert cfg == _Outer(8, _Inner(2.0))
    with pytest.raises(UserError, match=r"x\.inner: unknown key\(s\) sigam"):
        from_dict(_Outer, {"inner": {"sigam": 2}}, "x")
    with pytest.raises(UserError, match="x.size: expected an integer"):
        from_dict(_Outer, {"size": "big"}, "x")


def test_channel_names_follow_the_channel_order(skeleton):
    names, sl = skeleton.channel_names(), skeleton.channel_slices()
    assert len(names) == skeleton.num_channels
    assert names[sl["limbs"].start] == "limb neck-nose" and names[sl["keypoints"].start] == "keypoint nose"
    assert names[sl["person_mask"]] == "person mask" and names[sl["keypoint_max"]] == "keypoint max"


CROWDPOSE_ORDER = ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                   "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head", "neck"]


@pytest.mark.parametrize("name", ["crowdpose", "aic"])
def test_shipped_14_keypoint_skeletons(name):
    """Head and neck labelled (no derived keypoints), official sigmas, a tree plus redundant links."""
    from core.skeleton import SKELETONS
    s = load_skeleton(SKELETONS / f"{name}.yaml")
    assert (s.num_dataset, s.num_keypoints, s.derived, len(s.sigmas)) == (14, 14, (), 14)
    if name == "crowdpose":
        assert list(s.keypoints) == CROWDPOSE_ORDER
        assert s.sigmas == (.079, .079, .072, .072, .062, .062, .107, .107, .087, .087, .089, .089, .079, .079)
    else:  # AI Challenger's json order: right side first, then head top and neck
        assert s.keypoints[:3] == ("right_shoulder", "right_elbow", "right_wrist") and s.keypoints[12:] == ("head_top", "neck")
        assert s.sigmas[2] == pytest.approx(0.01057665)
    names = s.keypoints
    for i, j in enumerate(s.flip):  # flips swap left and right, keep the centre
        assert names[j] == names[i].replace("left", "@").replace("right", "left").replace("@", "right")
    from demo import tree_limbs  # the first K-1 limbs join every keypoint: a tree, then redundant links
    assert list(tree_limbs(s)) == list(s.limbs[: s.num_keypoints - 1]) and s.num_limbs > s.num_keypoints - 1


def test_keypoint_names_must_be_the_skeletons(skeleton):
    skeleton.check_keypoint_names(skeleton.keypoints[:17], "x.json")
    with pytest.raises(UserError, match=r"x.json: holds 14 keypoints per person, the skeleton 'coco' \(17"):
        skeleton.check_keypoint_names(CROWDPOSE_ORDER, "x.json")
    swapped = list(skeleton.keypoints[:17])
    swapped[1], swapped[2] = swapped[2], swapped[1]
    with pytest.raises(UserError, match="keypoint 1 is 'right_eye' where the skeleton 'coco' .* has 'left_eye'"):
        skeleton.check_keypoint_names(swapped, "x.json")
