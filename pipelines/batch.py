"""Finishing a DALI batch in torch (either device): keypoints to the contract, flag masks to channels.

    keypoints, over = finish_keypoints(raw_keypoints, flips, skeleton, input_size, max_people)
    masks = flag_masks(raw_masks)

The DALI graph warps the keypoints; what is per-keypoint bookkeeping rather than geometry
happens here, on tiny tensors: the left/right swap of mirrored samples, the derived keypoints
(computed AFTER the transform, from the warped sources), v = 0 outside the frame, and the
choice of at most Pmax people per sample.
"""
import functools

import torch

PERSON, IGNORE = 1, 2  # the mask's bit flags (shards/coco.py)


@functools.lru_cache(maxsize=None)
def _index(values: tuple, device: str) -> torch.Tensor:
    """A constant index tensor, made once per device (no host-to-device copy per batch)."""
    return torch.tensor(values, dtype=torch.long, device=device)


def finish_keypoints(keypoints, flips, skeleton, input_size: int, max_people: int):
    """Turn warped data keypoints into the batch's keypoint tensor.

    Args:
        keypoints: [B, P, K, 3] (x, y, v) input pixels, the data's K keypoints in data order,
            P >= 0 (rows with v = 0 everywhere are padding).
        flips: [B] bool or float, true where the sample was mirrored.
        skeleton: core.skeleton.Skeleton (flip permutation, derived keypoints).
        input_size: S; a keypoint is in frame when its pixel lies inside [0, S) x [0, S),
            i.e. -0.5 <= x, y < S - 0.5 with pixel centres at integers.
        max_people: Pmax.
    Returns:
        (keypoints [B, Pmax, K', 3] float32, over [B] bool): people ordered by the area of
        their in-frame keypoint box (largest first), at most Pmax kept; v = 0 and x = y = 0 for
        padding, unlabelled and out-of-frame keypoints; over marks samples that had more than
        Pmax people with an in-frame keypoint (the smallest were dropped).
    """
    B, P, K, _ = keypoints.shape
    kp = keypoints.float()
    if P == 0:
        kp = kp.new_zeros(B, 1, K, 3)
    # mirrored image: the person's left side is now where the right side was; swap the labels
    perm = _index(tuple(skeleton.flip[:K]), str(kp.device))
    kp = torch.where(flips.bool().view(B, 1, 1, 1), kp[:, :, perm], kp)
    kp = skeleton.add_derived(kp)  # from the labelled sources, before the frame test
    xy = kp[..., :2]
    inside = ((xy >= -0.5) & (xy < input_size - 0.5)).all(dim=-1) & (kp[..., 2] > 0)
    kp = kp * inside[..., None]

    # order people by in-frame box area (number of keypoints breaks ties), keep Pmax
    far = 1e9
    lo = torch.where(inside[..., None], xy, far).amin(dim=2)
    hi = torch.where(inside[..., None], xy, -far).amax(dim=2)
    count = inside.sum(dim=2)
    area = ((hi - lo).clamp_min(0).prod(dim=-1)) * (count > 0)
    score = torch.where(count > 0, area + count * 1e-3, torch.full_like(area, -1.0))
    order = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :max_people]
    kp = torch.gather(kp, 1, order[:, :, None, None].expand(-1, -1, kp.shape[2], 3))
    over = (count > 0).sum(dim=1) > max_people
    if kp.shape[1] < max_people:
        kp = torch.cat([kp, kp.new_zeros(B, max_people - kp.shape[1], kp.shape[2], 3)], dim=1)
    return kp.contiguous(), over


def flag_masks(flags):
    """[B, H, W, 1] or [B, H, W] uint8 bit flags -> [B, 2, H, W] float32.

    Channel 0: loss weight, 1 = count, 0 = ignore (flag IGNORE); channel 1: person (flag PERSON).
    """
    f = flags.reshape(flags.shape[0], flags.shape[1], flags.shape[2]).to(torch.int32)
    weight = 1 - torch.bitwise_and(f, IGNORE).clamp_max(1)
    person = torch.bitwise_and(f, PERSON)
    return torch.stack([weight, person], dim=1).float()
