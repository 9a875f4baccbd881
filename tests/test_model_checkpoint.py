"""Checkpoints: atomic writes, weights-only reads, and one-line errors for foreign or broken files."""
import pytest
import torch

from core.config import from_dict, load_yaml, to_dict
from core.errors import UserError
from core.skeleton import skeleton_from_dict
from model.checkpoint import load_checkpoint, load_model, save_checkpoint
from model.config import ModelConfig
from model.imhn import build_model


def tiny_checkpoint(skeleton, **extra):
    torch.manual_seed(0)
    cfg = from_dict(ModelConfig, load_yaml("configs/model/tiny.yaml"), "tiny.yaml")
    model = build_model(cfg, skeleton.num_channels)
    with torch.no_grad():  # weights and BN statistics unlike a fresh model's
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        model(torch.randn(2, 3, 64, 64))
    return model, {"model": model.state_dict(), "model_config": to_dict(cfg), "skeleton": skeleton.to_dict(),
                   "input_size": 128, **extra}


def test_round_trip_rebuilds_the_same_model(tmp_path, skeleton):
    model, ckpt = tiny_checkpoint(skeleton, step=7, rng=torch.get_rng_state(), config={"lr": 1e-3})
    path = save_checkpoint(ckpt, tmp_path / "runs" / "last.pt")
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left behind
    loaded, sk, raw = load_model(path, skeleton=skeleton)
    assert not loaded.training and sk == skeleton and raw["step"] == 7 and raw["input_size"] == 128
    assert torch.equal(raw["rng"], ckpt["rng"])
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict(x), model.eval().predict(x), rtol=0, atol=0)


def test_a_failed_save_keeps_the_previous_file(tmp_path, skeleton):
    _, ckpt = tiny_checkpoint(skeleton, step=1)
    path = save_checkpoint(ckpt, tmp_path / "last.pt")
    with pytest.raises(Exception):
        save_checkpoint({**ckpt, "step": 2, "bad": lambda: 0}, path)  # not picklable: fails mid-write
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert load_checkpoint(path)["step"] == 1


def test_broken_or_foreign_files_are_one_line_errors(tmp_path, skeleton):
    _, ckpt = tiny_checkpoint(skeleton)
    good = save_checkpoint(ckpt, tmp_path / "good.pt")
    torn = tmp_path / "torn.pt"
    torn.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": ModelConfig()}, pickled)  # an arbitrary object: weights_only refuses it
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    cases = {tmp_path / "missing.pt": "no such checkpoint file", torn: "not a readable checkpoint",
             other: "missing model, model_config, skeleton, input_size",
             pickled: "not a readable checkpoint", text: "not a readable checkpoint"}
    for path, message in cases.items():
        with pytest.raises(UserError) as e:
            load_model(path)
        assert str(path) in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


def test_a_checkpoint_for_another_skeleton_is_refused(tmp_path, skeleton):
    _, ckpt = tiny_checkpoint(skeleton)
    path = save_checkpoint(ckpt, tmp_path / "coco.pt")
    data = skeleton.to_dict()
    other = skeleton_from_dict({**data, "name": "coco_tree", "limbs": data["limbs"][:-9]})  # no redundant limbs
    with pytest.raises(UserError, match=r"checkpoint .*coco.pt was trained for skeleton 'coco' "
                                        r"\(18 keypoints, 30 limbs\), not 'coco_tree' \(18 keypoints, 21 limbs\)"):
        load_model(path, skeleton=other)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path, skeleton):
    _, ckpt = tiny_checkpoint(skeleton)
    ckpt["model_config"]["width"] = 48
    path = save_checkpoint(ckpt, tmp_path / "mixed.pt")
    with pytest.raises(UserError, match="weights do not fit its model_config"):
        load_model(path)
