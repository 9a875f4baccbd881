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
