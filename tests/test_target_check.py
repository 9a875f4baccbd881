"""The guards of a GPU run (pipelines/target_check.py): their comparisons catch results altered on
purpose and name what differs, on the CPU; on a GPU they pass on the real first batch."""
import pytest
import torch

from core.errors import UserError
from pipelines.config import PipelineConfig
from pipelines.target_check import (FALLBACK, check_gpu_path, check_targets, compare_batches, compare_maps,
                                    first_batch)
from pipelines.targets import TargetConfig, render_targets, render_targets_reference
from pipelines.targets_host import host_compiler, render_targets_host

CFG = TargetConfig()
SMALL = PipelineConfig(input_size=128, batch_size=4, num_threads=1)


def _batch(skeleton, seed=0):
    """(keypoints [2, 3, K', 3], masks [2, 2, 32, 32]) with people inside a 128 input."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(2, 3, 1, 2, generator=gen) * 80 + 24 + torch.randn(2, 3, skeleton.num_keypoints, 2, generator=gen) * 12
    kp = torch.cat([xy, torch.full((2, 3, skeleton.num_keypoints, 1), 2.0)], dim=-1)
    return kp, (torch.rand(2, 2, 32, 32, generator=gen) > 0.5).float()


def _altered(channel, delta, cell=(1, 10, 12)):
    """A renderer: the reference with one cell of `channel` changed by `delta`."""
    def render(keypoints, masks, skeleton, cfg):
        out = render_targets_reference(keypoints, masks, skeleton, cfg)
        out[cell[0], channel, cell[1], cell[2]] += delta
        return out
    return render


@pytest.mark.skipif(host_compiler() is None, reason="no C++ compiler to build the kernel for the CPU")
def test_the_kernel_built_for_the_cpu_passes_the_guard(skeleton):
    kp, masks = _batch(skeleton)
    assert check_targets(kp, masks, skeleton, CFG, render=render_targets_host) <= 1e-5


def test_an_altered_kernel_result_is_caught_and_its_channel_named(skeleton):
    kp, masks = _batch(skeleton)
    wrist = skeleton.channel_slices()["keypoints"].start + skeleton.index("left_wrist")
    with pytest.raises(UserError) as e:
        check_targets(kp, masks, skeleton, CFG, render=_altered(wrist, 0.01))
    message = str(e.value)
    assert f"channel {wrist} (keypoint left_wrist)" in message and "by 0.01 " in message
    assert "sample 1, cell (10, 12)" in message and "1 of 50 channels" in message and FALLBACK in message
    assert "\n" not in message
    # below the tolerance it passes, and says how far apart the two were
    assert check_targets(kp, masks, skeleton, CFG, render=_altered(wrist, 5e-5)) == pytest.approx(5e-5, rel=1e-2)


def test_nan_a_wrong_shape_and_a_failing_kernel_are_caught(skeleton):
    kp, masks = _batch(skeleton)
    limb = 3
    with pytest.raises(UserError, match=r"by inf .* channel 3 \(limb "):
        check_targets(kp, masks, skeleton, CFG, render=_altered(limb, float("nan")))
    ref = render_targets_reference(kp, masks, skeleton, CFG)
    with pytest.raises(UserError, match="shape"):
        compare_maps(ref[:, :-1], ref, skeleton)

    def broken(*args):
        raise RuntimeError("CuPy failed to load libnvrtc.so.13: cannot open shared object file\nmore detail")
    with pytest.raises(UserError, match=r"kernel failed \(RuntimeError: CuPy failed to load libnvrtc.so.13: "
                                        r"cannot open shared object file\); to train anyway set"):
        check_targets(kp, masks, skeleton, CFG, render=broken)


def test_pipeline_batches_compare_within_grey_levels_and_exactly_on_keypoints(sample_shards, skeleton):
    batch = first_batch(sample_shards["val"], SMALL, skeleton, "cpu")
    std = torch.tensor(SMALL.std)[None, :, None, None]
    mean_std = (SMALL.mean, SMALL.std)
    same = compare_batches(batch, batch, mean_std)
    assert same == {"image_grey_levels": 0.0, "image_max_grey_levels": 0.0, "mask_agreement": 1.0, "keypoint_px": 0.0}

    noisy = {**batch, "images": batch["images"] + torch.randn(batch["images"].shape) / std}  # ~0.8 grey levels
    assert 0.5 < compare_batches(noisy, batch, mean_std)["image_grey_levels"] < 1.0
    with pytest.raises(UserError, match="images differ .* by 5.00 grey levels"):
        compare_batches({**batch, "images": batch["images"] + 5 / std}, batch, mean_std)

    moved = batch["keypoints"].clone()
    moved[0, 0, 0, 0] += 0.01
    with pytest.raises(UserError, match="keypoints differ .* by 0.01 px"):
        compare_batches({**batch, "keypoints": moved}, batch, mean_std)
    hidden = batch["keypoints"].clone()
    b, p, k = (hidden[..., 2] > 0).nonzero()[0].tolist()
    hidden[b, p, k, 2] = 0
    with pytest.raises(UserError, match=f"which keypoints are visible \\(first: sample {b}, person {p}, keypoint {k}\\)"):
        compare_batches({**batch, "keypoints": hidden}, batch, mean_std)

    masks = batch["masks"].clone()
    masks.view(-1)[: masks.numel() // 20] = 1 - masks.view(-1)[: masks.numel() // 20]  # 5% of the cells
    with pytest.raises(UserError, match=r"masks agree .* on 95\.0\d% of the cells"):
        compare_batches({**batch, "masks": masks}, batch, mean_std)


def test_the_whole_guard_runs_end_to_end_on_the_cpu(sample_shards, skeleton):
    measured = check_gpu_path(sample_shards["train"], SMALL, skeleton, device="cpu")
    assert measured["image_grey_levels"] == 0 and measured["keypoint_px"] == 0
    assert measured["target_max_difference"] is None  # CPU batches: no CuPy kernel to check


@pytest.mark.gpu
def test_the_guard_passes_on_the_gpu(sample_shards, skeleton):
    cfg = PipelineConfig(input_size=256, batch_size=4, num_threads=2)
    measured = check_gpu_path(sample_shards["train"], cfg, skeleton, device="cuda")
    assert measured["target_max_difference"] <= 1e-4 and measured["image_grey_levels"] <= 3
    # the fallback renders with the torch reference on CUDA tensors, unchanged
    batch = first_batch(sample_shards["train"], cfg, skeleton, "cuda")
    fallback = render_targets(batch["keypoints"], batch["masks"], skeleton, TargetConfig(backend="torch"))
    assert fallback.is_cuda and check_targets(batch["keypoints"], batch["masks"], skeleton, cfg.targets,
                                              reference=lambda *a: fallback) <= 1e-4
