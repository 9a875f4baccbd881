"""Guards for the first batch of a GPU run: the CuPy target kernel against the torch reference,
and the DALI GPU pipeline against the CPU one.

    from pipelines.target_check import check_gpu_path
    measured = check_gpu_path(shards_dir, cfg, skeleton, "cuda", rank, world_size)  # or UserError

A wrong target map trains a model quietly and badly, and a GPU decoder or warp that drifts from
the CPU's changes what the model sees; neither crashes. So a GPU run first builds its loader on
the GPU and on the CPU for the same seeds and part of the shards, and compares their first
batches (`compare_batches`), then renders the GPU batch's targets with the CuPy kernel and with
the torch reference on the same tensors (`check_targets` -> `compare_maps`). A difference beyond
tolerance stops the run with one line naming what differs, by how much, and the fallback.

The comparisons are plain functions of tensors, and the renderers are arguments, so that CPU
tests feed them results altered on purpose (tests/test_target_check.py).
"""
import torch

from core.errors import UserError
from pipelines.targets import render_targets_reference

TARGET_TOLERANCE = 1e-4   # max |kernel - reference|: both are exp() of the same float32 d2 (ulps apart)
GREY_LEVELS = 3.0         # mean |image difference|, 0..255: JPEG chroma upsampling and bilinear weights differ
MASK_AGREEMENT = 0.99     # fraction of equal mask cells: nearest-neighbour ties at .5 break either way
KEYPOINT_PX = 1e-3        # keypoints are warped by the same CPU operators on both devices
FALLBACK = ("to train anyway set pipeline.targets.backend: torch (the reference on the GPU), "
            "or pass --no-target-check")


def compare_maps(result: torch.Tensor, reference: torch.Tensor, skeleton, tolerance: float = TARGET_TOLERANCE,
                 what: str = "the CuPy target kernel") -> float:
    """Largest |result - reference| over a batch of target maps; UserError beyond `tolerance`.

    Args:
        result, reference: [B, C, H, W] target maps (any devices, any float dtype), channels in
            skeleton.channel_slices order. A NaN counts as an infinite difference.
    Returns:
        the largest difference, when within tolerance.
    """
    if result.shape != reference.shape:
        raise UserError(f"{what} gives maps of shape {tuple(result.shape)}, the torch reference "
                        f"{tuple(reference.shape)}; {FALLBACK}")
    diff = (result.float() - reference.to(result.device).float()).abs().nan_to_num(nan=float("inf"))
    per_channel = diff.amax(dim=(0, 2, 3)).cpu() if diff.numel() else torch.zeros(diff.shape[1])  # [C]
    channel = int(per_channel.argmax()) if len(per_channel) else 0
    worst = float(per_channel[channel]) if len(per_channel) else 0.0
    if worst <= tolerance:
        return worst
    b, i, j = _argmax_cell(diff[:, channel])
    bad = int((per_channel > tolerance).sum())
    raise UserError(f"{what} differs from the torch reference by {worst:.3g} (tolerance {tolerance:g}) "
                    f"in channel {channel} ({skeleton.channel_names()[channel]}) at sample {b}, cell "
                    f"({i}, {j}): {float(result[b, channel, i, j]):.6g} vs "
                    f"{float(reference[b, channel, i, j]):.6g}; {bad} of {len(per_channel)} channels "
                    f"differ; {FALLBACK}")


def _argmax_cell(x: torch.Tensor) -> tuple:
    """(b, i, j) of the largest value of x [B, H, W]."""
    B, H, W = x.shape
    n = int(x.reshape(-1).argmax())
    return n // (H * W), n // W % H, n % W


def check_targets(keypoints: torch.Tensor, masks: torch.Tensor, skeleton, cfg, render=None,
                  reference=render_targets_reference, tolerance: float = TARGET_TOLERANCE) -> float:
    """Render one batch's targets with `render` and with `reference`; compare_maps the two.

    Args:
        keypoints: [B, P, K', 3] input pixels; masks: [B, 2, H, W]; both on the device to check.
        skeleton, cfg: as pipelines.targets.render_targets (cfg: TargetConfig).
        render: the renderer under test (default: the CuPy kernel, render_targets_cuda);
            reference: the one it must agree with. Both take (keypoints, masks, skeleton, cfg).
    Returns:
        the largest difference. A renderer that fails (CuPy without NVRTC, say) is a UserError.
    """
    if render is None:
        from pipelines.targets_cuda import render_targets_cuda as render
    try:
        result = render(keypoints, masks, skeleton, cfg)
        if result.is_cuda:
            torch.cuda.synchronize(result.device)  # a kernel's launch failure surfaces here, not later
    except Exception as e:  # a broken CUDA install is the user's to fix; say so in one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"the CuPy target kernel failed ({type(e).__name__}: {first}); {FALLBACK}") from None
    return compare_maps(result, reference(keypoints, masks, skeleton, cfg), skeleton, tolerance)


def compare_batches(batch: dict, reference: dict, mean_std: tuple, grey_levels: float = GREY_LEVELS,
                    mask_agreement: float = MASK_AGREEMENT, keypoint_px: float = KEYPOINT_PX,
                    what: str = "the GPU pipeline") -> dict:
    """Compare a loader batch with the reference device's batch of the same seeds.

    Args:
        batch, reference: batch dicts of pipelines.loader (images [B, 3, S, S] normalized,
            keypoints [B, Pmax, K', 3] input pixels, masks [B, 2, S/4, S/4]), any devices.
        mean_std: (mean, std) RGB 0..255 of the normalization, to measure images in grey levels.
    Returns:
        {"image_grey_levels": mean |difference|, "image_max_grey_levels", "mask_agreement",
        "keypoint_px": largest |xy difference|}; UserError on the first measure out of bounds.
    """
    ref = {k: v.to(batch[k].device) for k, v in reference.items() if k in ("images", "keypoints", "masks")}
    shapes = {k: (tuple(batch[k].shape), tuple(ref[k].shape)) for k in ref}
    for k, (a, b) in shapes.items():
        if a != b:
            raise UserError(f"{what} gives {k} of shape {a}, the CPU pipeline {b}")
    std = torch.tensor(mean_std[1], device=batch["images"].device)[None, :, None, None]
    grey = (batch["images"].float() - ref["images"].float()).abs() * std  # [B, 3, S, S], 0..255
    kp, kp_ref = batch["keypoints"], ref["keypoints"]
    measured = {"image_grey_levels": float(grey.mean()), "image_max_grey_levels": float(grey.max()),
                "mask_agreement": float((batch["masks"] == ref["masks"]).float().mean()),
                "keypoint_px": float((kp[..., :2] - kp_ref[..., :2]).abs().max()) if kp.numel() else 0.0}
    if not torch.equal(kp[..., 2] > 0, kp_ref[..., 2] > 0):
        b, p, k = (kp[..., 2] > 0).ne(kp_ref[..., 2] > 0).nonzero()[0].tolist()
        raise UserError(f"{what} and the CPU pipeline disagree on which keypoints are visible "
                        f"(first: sample {b}, person {p}, keypoint {k})")
    if not measured["keypoint_px"] <= keypoint_px:
        raise UserError(f"{what}'s keypoints differ from the CPU pipeline's by {measured['keypoint_px']:.3g} px "
                        f"(tolerance {keypoint_px:g})")
    if not measured["mask_agreement"] >= mask_agreement:
        raise UserError(f"{what}'s masks agree with the CPU pipeline's on {100 * measured['mask_agreement']:.2f}% "
                        f"of the cells (at least {100 * mask_agreement:g}% expected)")
    if not measured["image_grey_levels"] <= grey_levels:
        raise UserError(f"{what}'s images differ from the CPU pipeline's by {measured['image_grey_levels']:.2f} "
                        f"grey levels on average (at most {grey_levels:g} expected; largest "
                        f"{measured['image_max_grey_levels']:.0f})")
    return measured


def first_batch(shards_dir, cfg, skeleton, device: str, rank: int = 0, world_size: int = 1,
                train: bool = False) -> dict:
    """The first batch of epoch 0 of a loader built for `device` (pipelines.loader.make_loader)."""
    from pipelines.loader import make_loader
    with make_loader(shards_dir, cfg, skeleton, device=device, rank=rank, world_size=world_size,
                     train=train) as loader:
        loader.set_epoch(0)
        return next(iter(loader))


def check_gpu_path(shards_dir, cfg, skeleton, device="cuda", rank: int = 0, world_size: int = 1,
                   train: bool = False, reference_device: str = "cpu") -> dict:
    """Both guards of a GPU run on the first batch of this rank; UserError when one fails.

    The pipelines are compared without augmentation (train=False) by default: what differs
    between devices is the decoder and the warps, and the un-augmented batch shows them without
    depending on how DALI seeds each random operator of the two graphs.

    Args:
        shards_dir, cfg (PipelineConfig), skeleton, rank, world_size: as the run's loader.
        device: the device under test; reference_device: the one it must agree with.
    Returns:
        compare_batches' measures, and "target_max_difference" (None with targets.backend torch:
        the CuPy kernel is then not used).
    """
    batch = first_batch(shards_dir, cfg, skeleton, device, rank, world_size, train)
    reference = first_batch(shards_dir, cfg, skeleton, reference_device, rank, world_size, train)
    measured = compare_batches(batch, reference, (cfg.mean, cfg.std))
    measured["target_max_difference"] = None
    if cfg.targets.backend == "cupy" and batch["keypoints"].is_cuda:
        measured["target_max_difference"] = check_targets(batch["keypoints"], batch["masks"], skeleton, cfg.targets)
    return measured
