"""IMHN: output structure, the inference graph, gradients, memory formats, autocast, configs."""
import pytest
import torch

from core.config import from_dict, load_yaml, to_dict
from core.errors import UserError
from core.skeleton import skeleton_from_dict
from model.config import LossConfig, ModelConfig
from model.imhn import IMHN, build_model, count_parameters
from model.loss import multiscale_loss

TINY = "configs/model/tiny.yaml"
PAPER = "configs/model/imhn.yaml"


def load(path) -> ModelConfig:
    return from_dict(ModelConfig, load_yaml(path), path)


@pytest.fixture(scope="module")
def tiny_model(skeleton):
    torch.manual_seed(0)
    return build_model(load(TINY), skeleton.num_channels)


def images(batch=2, size=128, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def calibrated(model, batches=3):
    """`model` in eval mode, its maps O(1), with BatchNorm statistics averaged over random batches.

    The prediction heads start near 0 (std 1e-3), which would hide numerical differences, so they
    are re-drawn larger. Fresh running statistics (mean 0, variance 1) make an untrained net's
    activations grow from stack to stack in eval mode; calibrated ones keep the training-mode scale.
    """
    for head in model.outs:
        for conv in head:
            torch.nn.init.normal_(conv.weight, std=0.05)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for seed in range(batches):
            model(images(4, seed=100 + seed))
    return model.eval()


def test_outputs_every_stack_and_scale_with_the_skeletons_channels(tiny_model, skeleton):
    cfg = tiny_model.cfg
    out = tiny_model(images(size=128))
    assert len(out) == cfg.num_stacks and all(len(s) == cfg.num_scales for s in out)
    for stack in out:
        for i, o in enumerate(stack):
            assert o.shape == (2, skeleton.num_channels, 32 >> i, 32 >> i)
            assert torch.isfinite(o).all()
    # a non-square input works too (eval pads images to multiples, not to squares)
    assert tiny_model.predict(torch.zeros(1, 3, 64, 192)).shape == (1, skeleton.num_channels, 16, 48)


def test_output_channels_follow_another_skeleton():
    names = ["head", "l_hand", "r_hand"]
    sk = skeleton_from_dict({"name": "toy", "keypoints": names, "flip_pairs": [["l_hand", "r_hand"]],
                             "limbs": [["head", "l_hand"], ["head", "r_hand"]], "sigmas": [0.1, 0.1, 0.1]})
    model = IMHN(load(TINY), sk.num_channels)
    assert model(images(2, 64))[0][0].shape[1] == sk.num_channels == 2 + 3 + 2


def test_predict_is_the_last_stacks_finest_output(tiny_model):
    x = images(seed=1)
    for mode in (True, False):  # batch statistics (training) and running ones (inference)
        tiny_model.train(mode)
        with torch.no_grad():
            full = tiny_model(x)[-1][0]
            pred = tiny_model.predict(x)
        torch.testing.assert_close(pred, full, rtol=0, atol=0)
        assert pred.abs().max() > 0
    tiny_model.train()


def test_the_finest_maps_do_not_depend_on_the_coarser_heads(skeleton):
    """Why predict may skip them: coarse heads reach the last stack's finest maps by no path."""
    torch.manual_seed(0)
    model = calibrated(build_model(load(TINY), skeleton.num_channels))
    x = images(seed=4)
    with torch.no_grad():
        before = model(x)
        for k in range(model.cfg.num_stacks):
            for i in range(1, model.cfg.num_scales):
                for p in model.features[k][i].parameters():
                    p.add_(torch.randn_like(p))
        after = model(x)
    torch.testing.assert_close(after[-1][0], before[-1][0], rtol=0, atol=0)
    assert not torch.allclose(after[-1][1], before[-1][1])  # the coarse outputs did change


def test_every_parameter_gets_a_gradient(skeleton):
    torch.manual_seed(0)
    model = build_model(load(TINY), skeleton.num_channels)
    C = skeleton.num_channels
    targets = torch.rand(2, C, 32, 32, generator=torch.Generator().manual_seed(0))
    loss, _ = multiscale_loss(model(images()), targets, torch.ones(2, 1, 32, 32), skeleton, LossConfig())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_channels_last_gives_the_same_maps(skeleton):
    torch.manual_seed(0)
    model = calibrated(build_model(load(TINY), skeleton.num_channels))
    x = images(seed=2)
    with torch.no_grad():
        ref = model.predict(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl.predict(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=3e-4)  # maps are O(1); fp32 summation order differs


def test_bf16_autocast_runs_and_the_loss_stays_fp32(skeleton):
    torch.manual_seed(0)
    model = calibrated(build_model(load(TINY), skeleton.num_channels))  # same BN statistics for both runs
    x = images(seed=3)
    C = skeleton.num_channels
    targets = torch.rand(2, C, 32, 32, generator=torch.Generator().manual_seed(1))
    weight = torch.ones(2, 1, 32, 32)
    with torch.no_grad():
        ref, _ = multiscale_loss(model(x), targets, weight, skeleton, LossConfig())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            loss, _ = multiscale_loss(out, targets, weight, skeleton, LossConfig())
    assert out[0][0].dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=0.05)


def test_input_side_must_be_a_multiple_of_the_deepest_stride(tiny_model):
    assert tiny_model.cfg.input_multiple == 64
    with pytest.raises(ValueError, match="multiples of 64"):
        tiny_model(torch.zeros(1, 3, 96, 128))


def test_paper_config_has_129m_parameters_and_five_scales_at_512(skeleton):
    cfg = load(PAPER)
    assert cfg == ModelConfig()  # the yaml spells out the defaults
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = IMHN(cfg, skeleton.num_channels)
        out = model(torch.empty(1, 3, 512, 512))
    n = count_parameters(model)
    assert abs(n - 129e6) < 0.01 * 129e6, n  # simplepose_facts.md: about 129 M
    assert [o.shape[-1] for o in out[-1]] == [128, 64, 32, 16, 8] and len(out) == 4


def test_configs_load_strictly_and_round_trip(tmp_path):
    cfg = load(TINY)
    assert from_dict(ModelConfig, to_dict(cfg)) == cfg
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_stacks: 2\nwidht: 32\n")
    with pytest.raises(UserError, match="widht"):
        load(bad)
    bad.write_text("depth: 2\nnum_scales: 5\n")
    with pytest.raises(UserError, match="num_scales 5 needs depth >= 4"):
        load(bad)
    with pytest.raises(UserError, match="form"):
        from_dict(LossConfig, {"form": "papper"}, "loss")
    assert from_dict(LossConfig, {"scale_weights": [1, 2]}, "loss").scale_weights == (1.0, 2.0)


@pytest.mark.gpu
def test_compiled_bf16_channels_last_training_step_on_cuda(skeleton):
    torch.manual_seed(0)
    cfg = load(TINY)
    eager = build_model(cfg, skeleton.num_channels, device="cuda", channels_last=True)
    compiled = build_model(cfg, skeleton.num_channels, device="cuda", channels_last=True, compile=True)
    compiled.load_state_dict(eager.state_dict())
    assert set(compiled.state_dict()) == set(eager.state_dict())  # plain names: checkpoints stay loadable
    x = images(4, 128).cuda().contiguous(memory_format=torch.channels_last)
    targets = torch.rand(4, skeleton.num_channels, 32, 32, device="cuda")
    weight = torch.ones(4, 1, 32, 32, device="cuda")
    losses = []
    for model in (eager, compiled):
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast("cuda", dtype=dtype):
                loss, _ = multiscale_loss(model(x), targets, weight, skeleton, LossConfig())
            loss.backward()
            assert loss.dtype == torch.float32 and torch.isfinite(loss)
            losses.append(loss.item())
    assert max(losses) - min(losses) < 0.05 * max(losses)
