"""The focal L2 multi-scale loss: its definition, masking, scale weights, fp32 under autocast."""
import pytest
import torch
import torch.nn.functional as F

from core.errors import UserError
from model.config import LossConfig
from model.loss import multiscale_loss, resize_mask, resize_targets

B, H = 2, 32  # batch, finest map side (input 128)
SCALE_WEIGHTS = LossConfig().scale_weights


def random_case(skeleton, num_stacks=2, seed=0):
    """Raw outputs [stack][scale], sparse targets in [0, 1] and a 0/1 loss mask, at B x C x 32 x 32."""
    g = torch.Generator().manual_seed(seed)
    C = skeleton.num_channels
    targets = torch.rand(B, C, H, H, generator=g) * (torch.rand(B, C, H, H, generator=g) < 0.2)
    weight = (torch.rand(B, 1, H, H, generator=g) < 0.8).float()
    outputs = [[torch.randn(B, C, H >> i, H >> i, generator=g) * 0.3 for i in range(len(SCALE_WEIGHTS))]
               for _ in range(num_stacks)]
    return outputs, targets, weight


def test_without_focusing_it_is_masked_l2_with_channel_weights(skeleton):
    outputs, targets, weight = random_case(skeleton, num_stacks=1)
    cfg = LossConfig(gamma=0, scale_weights=(1.0,))
    loss, parts = multiscale_loss([outputs[0][:1]], targets, weight, skeleton, cfg)

    sl = skeleton.channel_slices()
    w = torch.ones(skeleton.num_channels)
    w[sl["keypoints"]] = 3.0
    w[sl["person_mask"]] = 0.1
    expected = (weight * w.view(1, -1, 1, 1) * (outputs[0][0] - targets) ** 2).sum() / B
    torch.testing.assert_close(loss, expected)
    assert set(parts) == {"scale0"}


def test_paper_and_code_forms_on_one_pixel(skeleton):
    """(s - t)^2 |1 - s_t|^gamma: paper s_t = s - 0.1 / 1 - s - 0.02, gamma 2; code gamma 1, no shifts."""
    C = skeleton.num_channels
    kp = skeleton.channel_slices()["keypoints"].start
    limb = skeleton.channel_slices()["limbs"].start
    pm = skeleton.channel_slices()["person_mask"]
    one = dict(scale_weights=(1.0,))
    for ch, t, w_c in ((kp, 1.0, 3.0), (limb, 0.0, 1.0), (pm, 1.0, 0.1)):
        pred = torch.zeros(1, C, 1, 1)
        pred[0, ch] = 0.5
        target = torch.zeros(1, C, 1, 1)
        target[0, ch] = t
        paper, _ = multiscale_loss([[pred]], target, torch.ones(1, 1, 1, 1), skeleton, LossConfig(**one))
        code, _ = multiscale_loss([[pred]], target, torch.ones(1, 1, 1, 1), skeleton,
                                  LossConfig(form="code", **one))
        s_t = 0.5 - 0.1 if t > 0 else 1 - 0.5 - 0.02
        assert paper.item() == pytest.approx(w_c * 0.25 * (1 - s_t) ** 2, rel=1e-6)
        assert code.item() == pytest.approx(w_c * 0.25 * 0.5, rel=1e-6)
    assert LossConfig(form="code", gamma=2.0, alpha=0.5).focal_constants() == (1.0, 0.0, 0.0)


@pytest.mark.parametrize("form", ["paper", "code"])
def test_masked_pixels_get_zero_gradient(skeleton, form):
    outputs, targets, weight = random_case(skeleton)
    weight[..., : H // 2] = 0  # ignore the left half
    for stack in outputs:
        for o in stack:
            o.requires_grad_(True)
    loss, _ = multiscale_loss(outputs, targets, weight, skeleton, LossConfig(form=form))
    loss.backward()
    for stack in outputs:
        for i, o in enumerate(stack):
            left = (H >> i) // 2  # the masked half at this scale
            assert torch.count_nonzero(o.grad[..., :left]) == 0, (form, i)
            assert torch.count_nonzero(o.grad[..., left:]) > 0, (form, i)


@pytest.mark.parametrize("form", ["paper", "code"])
def test_all_correct_prediction_has_zero_loss(skeleton, form):
    _, targets, weight = random_case(skeleton)
    # correct at every scale = the finest targets averaged over each coarse cell's block
    outputs = [[F.avg_pool2d(targets, 2 ** i) if i else targets.clone() for i in range(5)] for _ in range(3)]
    for stack in outputs:
        for o in stack:
            o.requires_grad_(True)
    loss, parts = multiscale_loss(outputs, targets, weight, skeleton, LossConfig(form=form))
    loss.backward()
    assert loss.item() == 0.0 and all(p.item() == 0.0 for p in parts.values())
    assert all(torch.count_nonzero(o.grad) == 0 for s in outputs for o in s)


def test_every_scale_contributes_with_its_weight(skeleton):
    C, t = skeleton.num_channels, 0.25
    targets = torch.full((B, C, H, H), t)  # constant (exact in binary): the same at every scale
    weight = torch.ones(B, 1, H, H)
    cfg = LossConfig(gamma=0)
    w = torch.ones(C)
    sl = skeleton.channel_slices()
    w[sl["keypoints"]], w[sl["person_mask"]] = 3.0, 0.1
    num_stacks = 2
    for off in range(5):  # only scale `off` of stack 1 is wrong, by 0.125 everywhere
        outputs = [[torch.full((B, C, H >> i, H >> i), t) for i in range(5)] for _ in range(num_stacks)]
        outputs[1][off] += 0.125
        loss, parts = multiscale_loss(outputs, targets, weight, skeleton, cfg)
        side = H >> off
        expected = SCALE_WEIGHTS[off] * 0.125 ** 2 * w.sum() * side * side * B / (num_stacks * sum(SCALE_WEIGHTS) * B)
        assert parts[f"scale{off}"].item() == pytest.approx(expected.item(), rel=1e-5)
        assert all(p.item() == 0 for k, p in parts.items() if k != f"scale{off}")
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_parts_add_up_and_everything_is_fp32_under_autocast(skeleton):
    outputs, targets, weight = random_case(skeleton)
    ref, ref_parts = multiscale_loss(outputs, targets, weight, skeleton, LossConfig())
    low = [[o.bfloat16() for o in s] for s in outputs]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, parts = multiscale_loss(low, targets.bfloat16(), weight, skeleton, LossConfig())
    assert loss.dtype == torch.float32 and all(p.dtype == torch.float32 for p in parts.values())
    assert list(parts) == [f"scale{i}" for i in range(5)]
    torch.testing.assert_close(sum(ref_parts.values()), ref)
    assert loss.item() == pytest.approx(ref.item(), rel=2e-2)  # only the bf16 rounding of the inputs


def test_mask_resize_is_bilinear_then_thresholded():
    w = torch.ones(1, 1, 4, 4)
    w[0, 0, 0, 0] = 0                  # block (0, 0): 1 of 4 ignored -> 0.75, kept
    w[0, 0, 0, 2:4] = 0                # block (0, 1): 2 of 4 ignored -> 0.5, kept
    w[0, 0, 2:4, 0] = 0
    w[0, 0, 2, 1] = 0                  # block (1, 0): 3 of 4 ignored -> 0.25, ignored
    m = resize_mask(w, (2, 2))
    torch.testing.assert_close(m[0, 0], torch.tensor([[0.75, 0.5], [0.0, 1.0]]))


def test_target_resize_keeps_mass_and_peak_block(skeleton):
    from pipelines.targets import TargetConfig, render_targets
    kpts = torch.zeros(1, 1, skeleton.num_keypoints, 3)
    kpts[0, 0, 0] = torch.tensor([50.0, 70.0, 2.0])  # the nose, in input pixels (input 128)
    t = render_targets(kpts, torch.zeros(1, 2, H, H), skeleton, TargetConfig())
    ch = skeleton.channel_slices()["keypoints"].start
    peak = divmod(int(t[0, ch].argmax()), H)
    for i in range(1, 5):
        r = resize_targets(t, (H >> i, H >> i))
        assert r[0, ch].sum().item() * 4 ** i == pytest.approx(t[0, ch].sum().item(), rel=1e-5)
        assert divmod(int(r[0, ch].argmax()), H >> i) == (peak[0] >> i, peak[1] >> i)


def test_scale_weights_must_match_the_model(skeleton):
    outputs, targets, weight = random_case(skeleton)
    with pytest.raises(UserError, match="scale_weights has 3 weights but the model has 5"):
        multiscale_loss(outputs, targets, weight, skeleton, LossConfig(scale_weights=(1.0, 1.0, 1.0)))
