"""Focal L2 loss on every channel, scale and stack of IMHN's outputs (SimplePose, eq. of the paper).

Per pixel, channel c, prediction s and target t:
    l = mask * w_c * (s - t)**2 * |1 - s_t|**gamma,
    s_t = s - alpha where t >= positive_threshold (foreground), 1 - s - beta elsewhere.
The factor down-weights pixels already predicted well (s near t). form "paper" uses the paper's
gamma = 2, alpha = 0.1, beta = 0.02; form "code" the released code's gamma = 1, alpha = beta = 0.
The factor is not detached (as in the original): its gradient also flows.

Normalization (the original's): each scale i's sum over batch, channels and pixels is averaged over
the stacks, weighted by scale_weights[i], and the total is divided by sum(scale_weights) and by the
batch size. `parts["scale{i}"]` is scale i's share of the loss (summed over the stacks), so the
parts add up to the loss.

Targets and the loss mask come at the finest scale (S/4) and are resized here to each scale:
- targets by area averaging (each coarse cell = mean of the 2**i x 2**i fine cells it covers).
  That keeps every peak's mass where it was, and it agrees with the half-pixel convention: the
  block's centre is exactly pipelines.targets.map_to_input(j, 4 * 2**i). Bilinear downsampling
  without antialiasing would read only the middle 2 of every 2**i cells per axis and could step
  over a narrow keypoint peak at the coarse scales. The original does the same (adaptive average
  pooling).
- the mask bilinearly, then values below mask_threshold (0.5) set to 0, as the original: a coarse
  cell is ignored when most of it is ignored.
Everything is computed in fp32, with autocast off, whatever the outputs' dtype.
"""
import torch
import torch.nn.functional as F

from core.errors import UserError
from model.config import LossConfig


def channel_weights(skeleton, cfg: LossConfig, device=None) -> torch.Tensor:
    """[C] float32 weight per output channel, from the skeleton's channel layout."""
    sl = skeleton.channel_slices()
    w = torch.empty(skeleton.num_channels, dtype=torch.float32, device=device)
    w[sl["limbs"]] = cfg.limb_weight
    w[sl["keypoints"]] = cfg.keypoint_weight
    w[sl["person_mask"]] = cfg.person_mask_weight
    w[sl["keypoint_max"]] = cfg.keypoint_max_weight
    return w


def resize_targets(targets: torch.Tensor, size) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, h, w] by area averaging (H, W multiples of h, w)."""
    if tuple(targets.shape[-2:]) == tuple(size):
        return targets
    return F.adaptive_avg_pool2d(targets, size)


def resize_mask(weight: torch.Tensor, size, threshold: float = 0.5) -> torch.Tensor:
    """[B, 1, H, W] loss weight -> [B, 1, h, w]: bilinear, then values below `threshold` -> 0."""
    if tuple(weight.shape[-2:]) == tuple(size):
        return weight
    m = F.interpolate(weight, size=tuple(size), mode="bilinear", align_corners=False)
    return torch.where(m < threshold, torch.zeros_like(m), m)


def focal_l2(pred: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float, beta: float,
             positive_threshold: float) -> torch.Tensor:
    """Elementwise (s - t)**2 * |1 - s_t|**gamma (see the module docstring); same shape as pred."""
    sq = (pred - target) ** 2
    if gamma == 0:
        return sq
    s_t = torch.where(target >= positive_threshold, pred - alpha, 1 - pred - beta)
    factor = (1 - s_t).abs()
    return sq * (factor if gamma == 1 else factor ** gamma)


def multiscale_loss(outputs, targets: torch.Tensor, weight: torch.Tensor, skeleton, cfg: LossConfig):
    """The training loss of IMHN.

    Args:
        outputs: list over stacks of list over scales of [B, C, H/2**i, W/2**i] raw maps (any dtype).
        targets: [B, C, H, W] in [0, 1], finest scale (S/4); C = skeleton.num_channels.
        weight: [B, 1, H, W] loss mask at the finest scale (1 = count, 0 = ignore).
        skeleton: core.skeleton.Skeleton (channel layout).
        cfg: LossConfig.
    Returns:
        (loss, parts): loss a float32 scalar tensor; parts {"scale0": ..., ...} float32 scalars,
        one per scale (summed over the stacks), adding up to loss.
    """
    num_scales = len(outputs[0])
    if num_scales != len(cfg.scale_weights):
        raise UserError(f"loss.scale_weights has {len(cfg.scale_weights)} weights but the model "
                        f"has {num_scales} output scales")
    C = skeleton.num_channels
    if targets.shape[1] != C or outputs[0][0].shape[1] != C:
        raise ValueError(f"expected {C} channels (skeleton '{skeleton.name}'), got targets "
                         f"{list(targets.shape)} and outputs {list(outputs[0][0].shape)}")
    B = targets.shape[0]
    gamma, alpha, beta = cfg.focal_constants()
    norm = len(outputs) * sum(cfg.scale_weights) * B
    with torch.autocast(device_type=targets.device.type, enabled=False):
        cw = channel_weights(skeleton, cfg, targets.device).view(1, C, 1, 1)
        targets, weight = targets.float(), weight.float()
        parts = {}
        for i, w_scale in enumerate(cfg.scale_weights):
            size = outputs[0][i].shape[-2:]
            t = resize_targets(targets, size)
            m = resize_mask(weight, size, cfg.mask_threshold) * cw  # [B, C, h, w]
            total = sum((focal_l2(stack[i].float(), t, gamma, alpha, beta, cfg.positive_threshold) * m).sum()
                        for stack in outputs)
            parts[f"scale{i}"] = total * (w_scale / norm)
        loss = sum(parts.values())
    return loss, parts
