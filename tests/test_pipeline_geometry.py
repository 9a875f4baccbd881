"""The pipeline's geometry on real sample images: painted discs land on their transformed
keypoints, a flip swaps left and right, and the flag mask moves with the image.

The images are the sample's own, turned grey (R = G = B) so that a painted colour's strength,
e.g. min(R, B) - G for magenta, is exactly the painted coverage after any bilinear warp; they are
stored as PNG (lossless) in the "jpg" component, which the decoders read by content.
"""
import json

import cv2
import numpy as np
import pytest
import torch

from pipelines.config import AugmentConfig, PipelineConfig
from pipelines.loader import make_loader
from shards.reader import iter_samples
from shards.writer import write_manifest, write_shard

DISC = 5          # painted disc radius, original pixels
ISOLATION = 40    # a keypoint is painted only if no other labelled keypoint is this close
STRONG = AugmentConfig(max_rotation=40, scale_prob=1.0, scale_min=0.7, scale_max=1.3, max_shift=50,
                       max_upscale=2.0, tint_prob=0.0)


def _grey(jpg: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    g = (cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) * 0.6).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)  # RGB, R = G = B


def _write_shards(folder, samples):
    """samples: [(key, rgb image, kpts [P, K, 3], mask uint8)] -> a shards folder the loader reads."""
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for key, rgb, kpts, mask in samples:
        ok_i, png = cv2.imencode(".png", rgb[..., ::-1])
        ok_m, mask_png = cv2.imencode(".png", mask)
        assert ok_i and ok_m
        meta = {"image_id": int(key), "width": rgb.shape[1], "height": rgb.shape[0],
                "keypoints_shape": list(kpts.shape)}
        items.append((key, {"jpg": png.tobytes(), "kpts": kpts.astype("<f4").tobytes(),
                            "mask.png": mask_png.tobytes(), "json": json.dumps(meta).encode()}))
    entry = write_shard(folder, "test", 0, items)
    write_manifest(folder, {"shards": [entry], "keypoint_names": [str(k) for k in range(17)]})
    return folder


@pytest.fixture(scope="module")
def disc_shards(sample_shards, skeleton, tmp_path_factory):
    """Sample images with a disc at each isolated labelled keypoint: magenta, right wrists green.

    Keypoints that are not isolated, or too near the image edge for a whole disc, are stored
    unlabelled, so every labelled output keypoint has a whole disc of its own.
    """
    right_wrist = skeleton.index("right_wrist")
    samples = []
    for s in iter_samples(sample_shards["train"]):
        rgb, kpts = _grey(s["jpg"]), s["kpts"].copy()
        flat = kpts.reshape(-1, 3)
        labelled = np.flatnonzero(flat[:, 2] > 0)
        xy = flat[labelled, :2]
        dist = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1)) + np.eye(len(xy)) * 1e9
        h, w = rgb.shape[:2]
        inside = (xy.min(axis=1) >= DISC + 2) & (xy[:, 0] <= w - DISC - 3) & (xy[:, 1] <= h - DISC - 3)
        alone = dist.min(axis=1) >= ISOLATION if len(xy) > 1 else np.ones(len(xy), bool)
        keep = labelled[alone & inside]  # whole discs only: the image edge would cut the others
        flat[np.setdiff1d(labelled, keep)] = 0
        for n in keep:
            colour = (0, 255, 0) if n % kpts.shape[1] == right_wrist else (255, 0, 255)
            cv2.circle(rgb, (int(round(flat[n, 0] * 16)), int(round(flat[n, 1] * 16))), DISC * 16, colour,
                       thickness=-1, lineType=cv2.LINE_AA, shift=4)  # sub-pixel centre, anti-aliased
        samples.append((s["key"], rgb, kpts, np.zeros(rgb.shape[:2], np.uint8)))
    return _write_shards(tmp_path_factory.mktemp("discs"), samples)


def _rgb(images, cfg):
    """[B, 3, S, S] normalized -> [B, S, S, 3] float pixel values 0..255."""
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    return (images.float() * std + mean).permute(0, 2, 3, 1).numpy()


def _blobs(strength):
    """Weighted centroids (x, y) of the connected regions of a colour-strength image [S, S]."""
    n, labels = cv2.connectedComponents((strength > 40).astype(np.uint8), connectivity=8)
    out = []
    for i in range(1, n):
        region = (labels == i) & (strength > 0)
        w = np.where(cv2.dilate((labels == i).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0, strength, 0)
        w = np.clip(w, 0, None)
        ys, xs = np.nonzero(w)
        out.append((np.average(xs, weights=w[ys, xs]), np.average(ys, weights=w[ys, xs]), region.sum()))
    return np.array(out).reshape(-1, 3)


def _disc_errors(loader, cfg, skeleton, flipped: bool):
    """Distance (input px) from each labelled dataset keypoint to the centroid of the nearest disc
    of its colour, and how many of them were the wrist expected on a green disc."""
    S, K = cfg.input_size, skeleton.num_dataset
    wrist_on_green = skeleton.index("left_wrist" if flipped else "right_wrist")
    errors, wrists = [], 0
    for batch in loader:
        rgb = _rgb(batch["images"], cfg)
        for b in range(rgb.shape[0]):
            r, g, bl = rgb[b, ..., 0], rgb[b, ..., 1], rgb[b, ..., 2]
            magenta, green = _blobs(np.minimum(r, bl) - g), _blobs(g - np.maximum(r, bl))
            for p, k in zip(*np.nonzero(batch["keypoints"][b, :, :K, 2].numpy() > 0)):
                x, y = batch["keypoints"][b, p, k, :2].tolist()
                if min(x, y) < 20 or max(x, y) > S - 21:
                    continue  # a disc cut by the frame edge has a shifted centroid
                blobs = green if k == wrist_on_green else magenta
                assert len(blobs), f"no disc of the right colour for keypoint {skeleton.keypoints[k]}"
                d = np.hypot(blobs[:, 0] - x, blobs[:, 1] - y).min()
                assert d <= 1.5, f"{skeleton.keypoints[k]} at ({x:.1f}, {y:.1f}) is {d:.2f} px from its disc"
                errors.append(d)
                wrists += k == wrist_on_green
    return np.array(errors), wrists


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_painted_discs_land_on_their_transformed_keypoints(disc_shards, skeleton, flip_prob):
    """Strong scale, rotation and shift; all flipped or none: after a flip the left wrist sits
    where the painted right-wrist disc (green) went, and every other keypoint on a magenta disc."""
    aug = AugmentConfig(**{**STRONG.__dict__, "flip_prob": flip_prob})
    cfg = PipelineConfig(input_size=512, batch_size=4, num_threads=2, seed=5, augment=aug)
    with make_loader(disc_shards, cfg, skeleton) as loader:
        errors, wrists = _disc_errors(loader, cfg, skeleton, flipped=flip_prob == 1.0)
    assert len(errors) >= 60 and wrists >= 3, (len(errors), wrists)
    # every disc within 1.5 px (asserted above); on average far closer: a half-pixel slip in the
    # image/keypoint conventions moves discs by 0.1 to 0.7 px on average, the correct code 0.02
    assert errors.mean() <= 0.2, errors.mean()


def test_augmentation_draws_similarities_in_the_configured_ranges(sample_shards, skeleton, tmp_path):
    """One single-person image, many epochs: fit a similarity from its original keypoints to each
    output; it must be exact (no shear), with the configured rotation range, both flips, and the
    scale the person normalization (target_dist) times [scale_min, scale_max]."""
    s = next(s for s in iter_samples(sample_shards["train"])
             if len(s["kpts"]) == 1 and (s["kpts"][0, :, 2] > 0).sum() >= 8)
    rgb = _grey(s["jpg"])
    folder = _write_shards(tmp_path / "one", [(s["key"], rgb, s["kpts"], np.zeros(rgb.shape[:2], np.uint8))])
    aug = AugmentConfig(max_shift=0, tint_prob=0, scale_prob=1.0)
    cfg = PipelineConfig(input_size=256, batch_size=1, num_threads=1, seed=3, augment=aug)
    size = np.ptp(s["kpts"][0, :, :2][s["kpts"][0, :, 2] > 0], axis=0).max()  # the keypoint box's larger side
    normalized = min(aug.target_dist * cfg.input_size / size, aug.max_upscale)
    angles, scales, flips = [], [], []
    with make_loader(folder, cfg, skeleton) as loader:
        for epoch in range(16):
            loader.set_epoch(epoch)
            kp = next(iter(loader))["keypoints"][0, :, :skeleton.num_dataset].numpy().astype(np.float64)
            person = kp[np.argmax((kp[..., 2] > 0).sum(1))]  # the only person (the rest is padding)
            lab = s["kpts"][0, :, 2] > 0
            # undo the left/right swap to pair each output keypoint with its source
            for flip in (False, True):
                order = np.array(skeleton.flip[:skeleton.num_dataset]) if flip else np.arange(skeleton.num_dataset)
                dst = person[order]
                ok = lab & (dst[:, 2] > 0)
                if ok.sum() < 3:
                    continue
                a, b = s["kpts"][0, ok, :2].astype(np.float64), dst[ok, :2]
                if flip:
                    a = a * [-1, 1]
                # least-squares similarity b = s R a + t, as a complex affine map
                za, zb = a[:, 0] + 1j * a[:, 1], b[:, 0] + 1j * b[:, 1]
                za0, zb0 = za - za.mean(), zb - zb.mean()
                m = (np.conj(za0) @ zb0) / (np.conj(za0) @ za0)
                if np.abs(m * za0 - zb0).max() < 0.01:  # exact: this is the flip the sample had
                    angles.append(np.degrees(np.angle(m)))
                    scales.append(abs(m) / normalized)
                    flips.append(flip)
                    break
            else:
                pytest.fail(f"epoch {epoch}: the keypoints are not a similarity of the originals")
    assert max(np.abs(angles)) <= 40 + 1e-3 and max(np.abs(angles)) > 20 and min(angles) < 0 < max(angles)
    assert 0.7 - 1e-4 <= min(scales) and max(scales) <= 1.3 + 1e-4 and max(scales) - min(scales) > 0.2
    assert 0 < sum(flips) < len(flips)


@pytest.fixture(scope="module")
def region_shards(sample_shards, tmp_path_factory):
    """Sample images with two painted discs (radius 60 px): cyan where the mask says IGNORE,
    yellow where it says PERSON; the mask holds nothing else."""
    samples = []
    rng = np.random.default_rng(0)
    for s in list(iter_samples(sample_shards["train"]))[:16]:
        rgb = _grey(s["jpg"])
        h, w = rgb.shape[:2]
        mask = np.zeros((h, w), np.uint8)
        centres = rng.uniform((80, 80), (w - 80, h - 80), size=(2, 2)).astype(int)
        while np.hypot(*(centres[0] - centres[1])) < 125:  # apart: a colour cannot paint over the other
            centres = rng.uniform((80, 80), (w - 80, h - 80), size=(2, 2)).astype(int)
        for (flag, colour), (cx, cy) in zip(((2, (0, 255, 255)), (1, (255, 255, 0))), centres.tolist()):
            disc = np.zeros((h, w), np.uint8)
            cv2.circle(disc, (cx, cy), 60, 1, thickness=-1)
            rgb[disc > 0] = colour
            mask[disc > 0] |= flag
        samples.append((s["key"], rgb, s["kpts"], mask))
    return _write_shards(tmp_path_factory.mktemp("regions"), samples)


def test_flag_mask_moves_with_the_image(region_shards, skeleton):
    cfg = PipelineConfig(input_size=256, batch_size=4, num_threads=2, seed=9, augment=STRONG)
    stride = cfg.targets.stride
    ious = []
    with make_loader(region_shards, cfg, skeleton) as loader:
        for batch in loader:
            rgb = _rgb(batch["images"], cfg)
            cyan = np.minimum(rgb[..., 1], rgb[..., 2]) - rgb[..., 0]          # the IGNORE disc
            yellow = np.minimum(rgb[..., 0], rgb[..., 1]) - rgb[..., 2]        # the PERSON disc
            masks = batch["masks"].numpy()
            for b in range(rgb.shape[0]):
                for painted, flagged in ((cyan[b], masks[b, 0] == 0), (yellow[b], masks[b, 1] == 1)):
                    # the painted disc at map resolution: cell j covers input pixels 4j .. 4j+3
                    cells = painted.reshape(painted.shape[0] // stride, stride, -1, stride).mean(axis=(1, 3)) > 127
                    union = (cells | flagged).sum()
                    if union >= 20:
                        ious.append((cells & flagged).sum() / union)
    assert len(ious) >= 12 and min(ious) >= 0.9, ious
