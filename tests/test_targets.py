"""Target maps: peaks at keypoints, limbs on their segments and zero beyond their width, empty
inputs, padding, the windowed reference against a dense brute force, and GPU parity."""
import math

import numpy as np
import pytest
import torch

from pipelines.targets import TargetConfig, input_to_map, map_to_input, render_targets, render_targets_reference

CFG = TargetConfig()


def _person(skeleton, points: dict, size=(1, 1)):
    """[1, 1, K', 3] keypoints with the named ones labelled at (x, y) input pixels."""
    kp = torch.zeros(*size, skeleton.num_keypoints, 3)
    for name, (x, y) in points.items():
        kp[..., skeleton.index(name), :] = torch.tensor([x, y, 2.0])
    return kp


def _dense(keypoints, H, W, skeleton, cfg):
    """Brute force in float64 numpy, every cell against every person: (limbs, heatmaps)."""
    kp = keypoints.double().numpy()
    B, P, K, _ = kp.shape
    qx = map_to_input(np.arange(W, dtype=np.float64), cfg.stride)[None, :]
    qy = map_to_input(np.arange(H, dtype=np.float64), cfg.stride)[:, None]
    heat = np.zeros((B, K, H, W))
    limbs = np.zeros((B, skeleton.num_limbs, H, W))
    for b in range(B):
        for p in range(P):
            for k in range(K):
                x, y, v = kp[b, p, k]
                if v > 0:
                    d2 = (qx - x) ** 2 + (qy - y) ** 2
                    g = np.where(d2 <= cfg.keypoint_radius() ** 2, np.exp(-d2 / (2 * cfg.keypoint_sigma ** 2)), 0)
                    heat[b, k] = np.maximum(heat[b, k], g)
            for n, (ka, kb) in enumerate(skeleton.limbs):
                a, e = kp[b, p, ka], kp[b, p, kb]
                if a[2] > 0 and e[2] > 0:
                    d2 = _point_segment_d2(qx, qy, a[:2], e[:2])
                    g = np.where(d2 <= cfg.limb_half_width() ** 2, np.exp(-d2 / (2 * cfg.limb_sigma ** 2)), 0)
                    limbs[b, n] = np.maximum(limbs[b, n], g)
    return limbs, heat


def _point_segment_d2(qx, qy, a, e):
    """Squared distance to the segment a-e: perpendicular inside the segment, else to the nearer end."""
    d = e - a
    length = math.hypot(*d)
    end2 = np.minimum((qx - a[0]) ** 2 + (qy - a[1]) ** 2, (qx - e[0]) ** 2 + (qy - e[1]) ** 2)
    if length == 0:
        return end2 + 0 * qy
    along = ((qx - a[0]) * d[0] + (qy - a[1]) * d[1]) / length
    across2 = ((qx - a[0]) * d[1] - (qy - a[1]) * d[0]) ** 2 / length ** 2
    return np.where((along >= 0) & (along <= length), across2, end2)


def _random_people(gen, B, P, skeleton, size):
    """People of plausible build spread over (and partly off) a size x size input; some unlabelled."""
    centre = torch.rand(B, P, 1, 2, generator=gen) * (size + 80) - 40
    xy = centre + torch.randn(B, P, skeleton.num_keypoints, 2, generator=gen) * size / 8
    v = (torch.rand(B, P, skeleton.num_keypoints, 1, generator=gen) > 0.25).float() * 2
    return torch.cat([xy, v], dim=-1)


def test_heatmap_peaks_sit_at_their_keypoints(skeleton):
    gen = torch.Generator().manual_seed(1)
    names = ["nose", "left_wrist", "right_ankle", "neck"]
    points = {n: tuple((torch.rand(2, generator=gen) * 440 + 36).tolist()) for n in names}
    t = render_targets(_person(skeleton, points), torch.zeros(1, 2, 128, 128), skeleton, CFG)[0]
    kp0 = skeleton.channel_slices()["keypoints"].start
    for name, (x, y) in points.items():
        m = t[kp0 + skeleton.index(name)]
        i, j = divmod(int(m.argmax()), m.shape[1])
        assert abs(j - input_to_map(x, 4)) <= 1 and abs(i - input_to_map(y, 4)) <= 1, name
        assert m.max() > math.exp(-2 * 2 ** 2 / (2 * 9 ** 2)) - 1e-6  # a cell centre lies within 2 px
        # exactly zero beyond the radius, and the unlabelled keypoints' channels are empty
        d = torch.hypot(map_to_input(torch.arange(128.), 4)[None] - x, map_to_input(torch.arange(128.), 4)[:, None] - y)
        assert (m[d > CFG.keypoint_radius()] == 0).all() and (m[d < CFG.keypoint_radius() - 0.01] > 0).all()
    labelled = {kp0 + skeleton.index(n) for n in names}
    empty = [c for c in range(kp0, kp0 + skeleton.num_keypoints) if c not in labelled]
    assert (t[empty] == 0).all()
    assert torch.equal(t[skeleton.channel_slices()["keypoint_max"]], t[kp0:kp0 + skeleton.num_keypoints].amax(0))


def test_limb_map_is_highest_on_its_segment_and_zero_beyond_its_width(skeleton):
    a, e = (120.3, 150.8), (300.6, 262.1)  # left shoulder -> left elbow, a long oblique limb
    kp = _person(skeleton, {"left_shoulder": a, "left_elbow": e})
    t = render_targets(kp, torch.zeros(1, 2, 128, 128), skeleton, CFG)[0]
    n = skeleton.limbs.index((skeleton.index("left_shoulder"), skeleton.index("left_elbow")))
    m = t[skeleton.channel_slices()["limbs"].start + n].double().numpy()
    q = map_to_input(np.arange(128.0), 4)
    d = np.sqrt(_point_segment_d2(q[None, :], q[:, None], np.array(a), np.array(e)))
    width = CFG.limb_half_width()
    assert (m[d > width] == 0).all()
    assert (m[d < width - 0.01] > 0).all()
    np.testing.assert_allclose(m, np.where(d <= width, np.exp(-d ** 2 / (2 * 7 ** 2)), 0), atol=5e-6)
    on = d < 0.5 * 4  # cells whose centre is on the segment (within half a cell)
    assert on.sum() > 40 and m[on].min() > m[~on].max() - 0.03 and m.max() > 0.99
    # every other limb needs a keypoint that is not labelled: empty
    others = [c for c in range(skeleton.num_limbs) if c != n]
    assert (t[others] == 0).all()


def test_no_people_gives_all_zero_maps(skeleton):
    for P in (0, 3):  # no rows at all, or only padding rows
        t = render_targets(torch.zeros(2, P, skeleton.num_keypoints, 3), torch.zeros(2, 2, 64, 48), skeleton, CFG)
        assert t.shape == (2, skeleton.num_channels, 64, 48) and (t == 0).all()


def test_padding_rows_contribute_nothing(skeleton):
    gen = torch.Generator().manual_seed(2)
    kp = _random_people(gen, 2, 3, skeleton, 256)
    junk = _random_people(gen, 2, 4, skeleton, 256)
    junk[..., 2] = 0  # padding: v = 0, whatever x and y say
    masks = torch.zeros(2, 2, 64, 64)
    padded = torch.cat([kp[:, :1], junk[:, :2], kp[:, 1:], junk[:, 2:]], dim=1)
    assert torch.equal(render_targets(padded, masks, skeleton, CFG), render_targets(kp, masks, skeleton, CFG))


def test_windowed_reference_equals_dense_brute_force(skeleton):
    gen = torch.Generator().manual_seed(3)
    kp = _random_people(gen, 3, 4, skeleton, 256)
    kp[0, 0, skeleton.index("left_elbow"), :2] = kp[0, 0, skeleton.index("left_shoulder"), :2]  # zero-length limb
    H, W = 64, 56  # non-square maps (evaluation renders at the image's aspect ratio)
    t = render_targets_reference(kp, torch.zeros(3, 2, H, W), skeleton, CFG).double().numpy()
    limbs, heat = _dense(kp, H, W, skeleton, CFG)
    sl = skeleton.channel_slices()
    assert heat.max() > 0.9 and limbs.max() > 0.9
    np.testing.assert_allclose(t[:, sl["limbs"]], limbs, atol=2e-6)
    np.testing.assert_allclose(t[:, sl["keypoints"]], heat, atol=2e-6)
    np.testing.assert_allclose(t[:, sl["keypoint_max"]], heat.max(axis=1), atol=2e-6)


def test_person_mask_channel_is_the_eroded_person_mask(skeleton):
    masks = torch.zeros(1, 2, 16, 16)
    masks[0, 1, 4:9, 4:9] = 1      # a 5 x 5 block erodes to 3 x 3
    masks[0, 1, 0:3, 12:16] = 1    # touching the border: the outside does not erode it
    masks[0, 0] = 1
    person = render_targets(torch.zeros(1, 1, skeleton.num_keypoints, 3), masks, skeleton, CFG)[
        0, skeleton.channel_slices()["person_mask"]]
    expected = torch.zeros(16, 16)
    expected[5:8, 5:8] = 1
    expected[0:2, 13:16] = 1
    assert torch.equal(person, expected)
    plain = render_targets(torch.zeros(1, 1, skeleton.num_keypoints, 3), masks, skeleton,
                           TargetConfig(person_mask_erode=0))[0, skeleton.channel_slices()["person_mask"]]
    assert torch.equal(plain, masks[0, 1])


@pytest.mark.gpu
def test_cuda_kernel_matches_reference_on_random_people(skeleton):
    from pipelines.targets_cuda import render_targets_cuda

    gen = torch.Generator().manual_seed(4)
    kp = _random_people(gen, 4, 6, skeleton, 512)
    masks = (torch.rand(4, 2, 128, 128, generator=gen) > 0.5).float()
    ref = render_targets_reference(kp, masks, skeleton, CFG)
    out = render_targets_cuda(kp.cuda(), masks.cuda(), skeleton, CFG)
    assert out.is_cuda and out.shape == ref.shape
    assert (out.cpu() - ref).abs().max().item() <= 1e-4
    empty = render_targets_cuda(torch.zeros(2, 0, skeleton.num_keypoints, 3, device="cuda"),
                                torch.zeros(2, 2, 32, 40, device="cuda"), skeleton, CFG)
    assert empty.shape == (2, skeleton.num_channels, 32, 40) and (empty == 0).all()


@pytest.mark.gpu
def test_cuda_kernel_matches_reference_on_augmented_batches(sample_shards, skeleton):
    from pipelines.config import PipelineConfig
    from pipelines.loader import make_loader
    from pipelines.targets_cuda import render_targets_cuda

    cfg = PipelineConfig(batch_size=8, num_threads=2)
    with make_loader(sample_shards["train"], cfg, skeleton, device="cuda") as loader:
        worst = 0.0
        for batch in loader:
            kp, masks = batch["keypoints"], batch["masks"]
            ref = render_targets_reference(kp.cpu(), masks.cpu(), skeleton, cfg.targets)
            worst = max(worst, (render_targets_cuda(kp, masks, skeleton, cfg.targets).cpu() - ref).abs().max().item())
            assert (batch["targets"].cpu() - ref).abs().max().item() <= 1e-4
    assert worst <= 1e-4


def test_backend_is_checked_and_cpu_tensors_always_take_the_reference(skeleton):
    from core.config import from_dict
    from core.errors import UserError

    assert TargetConfig().backend == "cupy"
    with pytest.raises(UserError, match="backend must be one of cupy, torch"):
        from_dict(TargetConfig, {"backend": "numba"}, "pipeline.targets")
    gen = torch.Generator().manual_seed(9)
    kp, masks = _random_people(gen, 2, 3, skeleton, 256), torch.zeros(2, 2, 64, 64)
    for backend in ("cupy", "torch"):
        assert torch.equal(render_targets(kp, masks, skeleton, TargetConfig(backend=backend)),
                           render_targets_reference(kp, masks, skeleton, CFG))


@pytest.mark.gpu
def test_torch_backend_runs_the_reference_on_cuda_tensors(skeleton):
    gen = torch.Generator().manual_seed(10)
    kp, masks = _random_people(gen, 2, 3, skeleton, 256), (torch.rand(2, 2, 64, 64, generator=gen) > 0.5).float()
    out = render_targets(kp.cuda(), masks.cuda(), skeleton, TargetConfig(backend="torch"))
    assert out.is_cuda and (out.cpu() - render_targets_reference(kp, masks, skeleton, CFG)).abs().max() <= 1e-5
