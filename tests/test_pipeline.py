"""The loader's contract: batch layout, ranks, determinism and exact resume, the un-augmented
path against an independent cv2 computation, Pmax, errors, config."""
import json

import cv2
import numpy as np
import pytest
import torch

from core.config import from_dict, load_yaml
from core.errors import UserError
from pipelines.config import AugmentConfig, PipelineConfig
from pipelines.loader import make_loader
from pipelines.targets import render_targets_reference
from shards.reader import iter_samples

SMALL = PipelineConfig(input_size=128, batch_size=4, num_threads=2, max_people=6, seed=11)


def _collect(loader, n=None):
    """(images, keypoints, masks, targets) of the next n batches (all of the epoch if None)."""
    out = []
    for i, batch in enumerate(loader):
        out.append({k: v.clone() for k, v in batch.items()})
        if n is not None and i + 1 == n:
            break
    return out


def _same(a, b):
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x) and len(a) == len(b)


def test_batches_follow_the_contract(sample_shards, skeleton):
    cfg = SMALL
    S, m = cfg.input_size, cfg.map_size
    with make_loader(sample_shards["train"], cfg, skeleton) as loader:
        assert len(loader) == 28 // cfg.batch_size
        batches = _collect(loader)
    assert len(batches) == len(loader)
    for b in batches:
        assert b["images"].shape == (4, 3, S, S) and b["images"].dtype == torch.float32
        assert b["keypoints"].shape == (4, cfg.max_people, skeleton.num_keypoints, 3)
        assert b["masks"].shape == (4, 2, m, m) and b["targets"].shape == (4, skeleton.num_channels, m, m)
        assert all(t.dtype == torch.float32 for t in (b["keypoints"], b["masks"], b["targets"]))
        assert torch.isfinite(b["images"]).all() and -3 < b["images"].mean() < 3
        kp = b["keypoints"]
        vis = kp[..., 2] > 0
        assert set(kp[..., 2].unique().tolist()) <= {0.0, 1.0, 2.0}
        assert (kp[~vis] == 0).all()                                   # absent: (0, 0, 0)
        assert (kp[vis][:, :2] >= -0.5).all() and (kp[vis][:, :2] < S - 0.5).all()  # in frame
        # the neck is derived after the transform: the midpoint of the warped shoulders
        ls, rs, neck = (skeleton.index(n) for n in ("left_shoulder", "right_shoulder", "neck"))
        both = vis[..., ls] & vis[..., rs] & vis[..., neck]
        assert torch.allclose(kp[..., neck, :2][both], (kp[..., ls, :2][both] + kp[..., rs, :2][both]) / 2, atol=1e-4)
        assert set(b["masks"].unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(b["targets"], render_targets_reference(kp, b["masks"], skeleton, cfg.targets))
    assert sum(int((b["keypoints"][..., 2] > 0).any(-1).sum()) for b in batches) > 40  # people survive cropping
    assert min(float((b["masks"][:, 0] == 0).float().mean()) for b in batches) < 1  # some cells are ignored


def test_ranks_get_equal_batch_counts_and_disjoint_samples(sample_shards, skeleton):
    cfg = PipelineConfig(input_size=64, batch_size=2, num_threads=1, seed=1)
    seen = []
    for rank in range(3):
        with make_loader(sample_shards["train"], cfg, skeleton, rank=rank, world_size=3, train=False) as loader:
            assert len(loader) == 28 // 3 // 2
            seen.append({hash(img.numpy().tobytes()) for b in _collect(loader) for img in b["images"]})
        with make_loader(sample_shards["train"], cfg, skeleton, rank=rank, world_size=3) as loader:
            loader.set_epoch(1)
            assert len(_collect(loader)) == len(loader)
    assert all(len(s) == 8 for s in seen)
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])


def test_same_seed_same_batches_new_epoch_new_batches(sample_shards, skeleton):
    with make_loader(sample_shards["train"], SMALL, skeleton) as a, make_loader(sample_shards["train"], SMALL, skeleton) as b:
        first = _collect(a, 3)
        assert _same(first, _collect(b, 3))
        a.set_epoch(1)
        assert not torch.equal(_collect(a, 1)[0]["keypoints"], first[0]["keypoints"])
    other = PipelineConfig(**{**SMALL.__dict__, "seed": 12})
    with make_loader(sample_shards["train"], other, skeleton) as c:
        assert not torch.equal(_collect(c, 1)[0]["images"], first[0]["images"])


def test_resume_continues_on_exactly_the_same_batches(sample_shards, skeleton):
    """N steps + save + resume in a new loader + the rest == the same steps straight, across an epoch end."""
    def run(loader, epochs, stop_after=None):
        got = []
        for epoch in epochs:
            loader.set_epoch(epoch)
            for batch in loader:
                got.append({k: v.clone() for k, v in batch.items()})
                if stop_after is not None and len(got) == stop_after:
                    return got
        return got

    with make_loader(sample_shards["train"], SMALL, skeleton) as loader:
        straight = run(loader, [0, 1, 2])
    for stop_after in (5, 9):  # in the first epoch, and in the second (one pipeline for both)
        with make_loader(sample_shards["train"], SMALL, skeleton) as loader:
            head = run(loader, [0, 1, 2], stop_after=stop_after)
            state = json.loads(json.dumps(loader.state_dict()))  # plain data: fits in a checkpoint
        assert (state["epoch"], state["batches"]) == divmod(stop_after, 7) and state["dali"]
        with make_loader(sample_shards["train"], SMALL, skeleton) as loader:
            loader.load_state_dict(state)  # DALI's checkpoint: nothing decoded twice
            tail = run(loader, range(state["epoch"], 3))
        assert len(straight) == 3 * 7 and _same(head + tail, straight)
    # a state without DALI's checkpoint (an older run's) replays the batches taken: the same
    with make_loader(sample_shards["train"], SMALL, skeleton) as loader:
        loader.load_state_dict({"epoch": 1, "batches": 2})
        assert _same(run(loader, [1, 2]), straight[9:])


def test_without_augmentation_the_input_is_the_inference_frame_as_cv2_would_make_it(sample_shards, skeleton):
    """train=False: the left S x S window of the inference frame (height S, core/frame.py), in
    shard order; keypoints, image and flag mask agree with cv2.warpAffine / numpy applying that
    affine, and keypoints outside the window are dropped."""
    cfg = PipelineConfig(input_size=128, batch_size=4, num_threads=2, max_people=20)
    S, stride = cfg.input_size, cfg.targets.stride
    samples = list(iter_samples(sample_shards["val"]))
    with make_loader(sample_shards["val"], cfg, skeleton, train=False) as loader:
        batches = _collect(loader)
    got = [(b["images"][i], b["keypoints"][i], b["masks"][i]) for b in batches for i in range(cfg.batch_size)]
    assert len(got) == 28
    mask_agree = []
    for s, (image, kp, masks) in zip(samples, got):
        h, w = s["mask"].shape
        scale = S / h
        # original -> input pixels (centres at integers): u = (x + 0.5) * scale - 0.5
        m = np.array([[scale, 0, 0.5 * scale - 0.5], [0, scale, 0.5 * scale - 0.5]])
        expected = skeleton.add_derived(s["kpts"].copy())
        expected[..., :2] = expected[..., :2] * scale + m[:, 2]
        inside = (expected[..., 2] > 0) & (expected[..., :2] >= -0.5).all(-1) & (expected[..., :2] < S - 0.5).all(-1)
        want = sorted(map(tuple, np.round(expected[inside], 3).tolist()))
        have = sorted(map(tuple, np.round(kp[kp[..., 2] > 0].numpy(), 3).tolist()))
        assert np.allclose(np.array(want).reshape(-1, 3), np.array(have).reshape(-1, 3), atol=2e-3)
        rgb = cv2.imdecode(np.frombuffer(s["jpg"], np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)[..., ::-1]
        ref = cv2.warpAffine(np.ascontiguousarray(rgb), m, (S, S), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=(cfg.fill,) * 3).astype(np.float32)
        pixels = image.permute(1, 2, 0).numpy() * np.array(cfg.std) + np.array(cfg.mean)
        assert np.abs(pixels - ref).mean() < 3  # decoders and interpolation differ by a few levels
        # map cell j samples input pixel stride * j + (stride - 1) / 2: the mask matrix for cv2
        mm = m / stride
        mm[:, 2] -= (stride - 1) / 2 / stride
        flags = cv2.warpAffine(s["mask"], mm, (S // stride, S // stride), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        want_masks = np.stack([(flags & 2) == 0, (flags & 1) > 0]).astype(np.float32)
        mask_agree.append((masks.numpy() == want_masks).mean())
    assert min(mask_agree) > 0.97 and np.mean(mask_agree) > 0.99  # nearest-neighbour ties may differ


def test_more_people_than_pmax_keep_the_largest_and_are_counted(sample_shards, skeleton):
    cfg = PipelineConfig(input_size=128, batch_size=4, num_threads=2, max_people=2)
    samples = list(iter_samples(sample_shards["train"]))
    with make_loader(sample_shards["train"], cfg, skeleton, train=False) as loader:
        batches = _collect(loader)
        stats = loader.stats()
    kept = [kp for b in batches for kp in b["keypoints"]]
    over = 0
    S = cfg.input_size
    for s, kp in zip(samples, kept):
        # the input is the left S x S window of the frame: people are compared by what is in it
        xy = s["kpts"][..., :2] * (S / s["mask"].shape[0]) + (0.5 * S / s["mask"].shape[0] - 0.5)
        lab = (s["kpts"][..., 2] > 0) & (xy >= -0.5).all(-1) & (xy < S - 0.5).all(-1)
        boxes = [np.ptp(p[l], axis=0).prod() if l.sum() else -1 for p, l in zip(xy, lab)]
        largest = [i for i in np.argsort(boxes, kind="stable")[::-1][:2] if lab[i].any()]
        counts = sorted(int(l.sum()) for l in lab[largest])
        assert sorted(int(c) for c in (kp[:, :skeleton.num_dataset, 2] > 0).sum(1) if c) == counts
        over += int(lab.any(-1).sum()) > 2
    assert over >= 5 and stats == {"samples": 28, "over_max_people": over, "max_people": 2}


def test_frame_mode_is_eval_frame_at_a_random_horizontal_offset(sample_shards, skeleton):
    """center: frame, nothing else random: each input is an S-wide window of exactly the image
    eval.py makes (evaluation.inference.Preprocess, the same frame), at one horizontal offset in
    [0, spare] per sample (0 where the frame is narrower than S, padded as eval.py pads); the
    offsets vary between samples."""
    from evaluation.inference import Preprocess
    from evaluation.sources import decode_rgb
    cfg = PipelineConfig(input_size=96, batch_size=4, num_threads=1, shuffle_buffer=1,
                         augment=AugmentConfig(center="frame", scale_prob=0, max_rotation=0, max_shift=0,
                                               flip_prob=0, tint_prob=0))
    S = cfg.input_size
    samples = {s["image_id"]: s for s in iter_samples(sample_shards["val"])}
    by_keypoints = {i: skeleton.add_derived(s["kpts"].copy()) for i, s in samples.items()}
    with make_loader(sample_shards["val"], cfg, skeleton) as loader:
        batches = _collect(loader)
    prep = Preprocess(S, multiple=cfg.targets.stride, mean=cfg.mean, std=cfg.std, fill=round(cfg.fill))
    offsets, checked = [], 0
    for b in batches:
        for image, kp in zip(b["images"], b["keypoints"]):
            have = kp[kp[..., 2] > 0].numpy()
            if len(have) < 3:
                continue
            # which sample, and at which offset: the one whose frame keypoints, shifted, match
            # (y is the frame's exactly, so a keypoint of the same y gives the offset)
            found = False
            for image_id, k in by_keypoints.items():
                H, W = samples[image_id]["mask"].shape
                frame = k[k[..., 2] > 0][:, :2] * (S / H) + (0.5 * S / H - 0.5)
                for dx in frame[np.abs(frame[:, 1] - have[0, 1]) < 2e-3, 0] - have[0, 0]:
                    shifted = frame - [dx, 0]
                    shifted = shifted[(shifted >= -0.5).all(1) & (shifted < S - 0.5).all(1)]
                    found = len(shifted) == len(have) and np.allclose(
                        np.sort(shifted, 0), np.sort(have[:, :2], 0), atol=2e-3)
                    if found:
                        break
                if found:
                    break
            else:
                raise AssertionError("a sample's keypoints are no shifted copy of any image's frame keypoints")
            spare = max(W * S / H - S, 0)
            assert -1e-3 <= dx <= spare + 1e-3
            offsets.append(dx)
            eval_image = prep.batch([decode_rgb(samples[image_id]["jpg"], "x")]).images[0].permute(1, 2, 0).numpy()
            x0 = int(round(dx))
            if abs(dx - x0) < 0.05:  # a whole-pixel offset: the same pixels as eval.py's
                window = np.full((S, S, 3), cfg.fill, np.float32)
                part = eval_image[:, x0:x0 + S]
                window[:, :part.shape[1]] = part
                pixels = image.permute(1, 2, 0).numpy() * np.array(cfg.std) + np.array(cfg.mean)
                assert np.abs(pixels - window).mean() < 1  # one affine, one interpolation: decoders differ
                checked += 1
    assert len(offsets) >= 12 and len({round(o, 1) for o in offsets}) > 3  # random offsets, not one
    assert 0 in {round(o) for o in offsets} and checked  # portrait images: no offset, right side padded


@pytest.mark.parametrize("center, dtype", [("random", "float16"), ("image", "float32")])
def test_other_crop_modes_and_half_images(sample_shards, skeleton, center, dtype):
    cfg = PipelineConfig(input_size=64, batch_size=4, num_threads=1, image_dtype=dtype,
                         augment=AugmentConfig(center=center))
    with make_loader(sample_shards["train"], cfg, skeleton) as loader:
        batch = next(iter(loader))
    assert batch["images"].dtype == getattr(torch, dtype) and torch.isfinite(batch["images"].float()).all()
    vis = batch["keypoints"][..., 2] > 0
    assert vis.any() and (batch["keypoints"][vis][:, :2] < 63.5).all()


def test_user_mistakes_are_user_errors(sample_shards, skeleton, tmp_path):
    with pytest.raises(UserError, match="not found"):
        make_loader(tmp_path / "nowhere", SMALL, skeleton)
    with pytest.raises(UserError, match="manifest"):
        make_loader(tmp_path, SMALL, skeleton)
    with pytest.raises(UserError, match="no full batch"):
        make_loader(sample_shards["train"], PipelineConfig(batch_size=64), skeleton)
    with pytest.raises(UserError, match="unknown key"):
        from_dict(PipelineConfig, {"augment": {"rotation": 10}}, "pipeline")
    with pytest.raises(UserError, match="center"):
        from_dict(PipelineConfig, {"augment": {"center": "middle"}}, "pipeline")
    with pytest.raises(UserError, match="multiple of"):
        from_dict(PipelineConfig, {"input_size": 510}, "pipeline")
    with make_loader(sample_shards["train"], SMALL, skeleton) as loader:
        with pytest.raises(UserError, match="batches taken"):
            loader.load_state_dict({"epoch": 0, "batches": 99})


def test_config_yaml_holds_the_defaults():
    path = "configs/pipeline/coco.yaml"
    cfg = from_dict(PipelineConfig, load_yaml(path), path)
    assert cfg == PipelineConfig() and cfg.augment == AugmentConfig() and cfg.map_size == 128


@pytest.mark.gpu
def test_gpu_pipeline_matches_the_cpu_pipeline(sample_shards, skeleton):
    """Without augmentation the devices must agree: keypoints exactly, masks (nearest) almost
    everywhere, images up to the JPEG decoders' rounding; with augmentation the GPU batches keep
    the contract and their targets are the reference's for their own keypoints and masks."""
    cfg = PipelineConfig(input_size=256, batch_size=4, num_threads=2, seed=2)
    with make_loader(sample_shards["val"], cfg, skeleton, train=False) as cpu, \
            make_loader(sample_shards["val"], cfg, skeleton, device="cuda", train=False) as gpu:
        for a, b in zip(_collect(cpu, 3), _collect(gpu, 3)):
            assert all(v.is_cuda for v in b.values())
            b = {k: v.cpu() for k, v in b.items()}
            assert torch.allclose(a["keypoints"], b["keypoints"], atol=1e-3)
            assert (a["masks"] == b["masks"]).float().mean() > 0.99
            assert (a["images"] - b["images"]).abs().mean() < 0.05
    with make_loader(sample_shards["train"], cfg, skeleton, device="cuda") as gpu:
        for batch in _collect(gpu):
            assert all(v.is_cuda for v in batch.values()) and batch["targets"].shape[1] == skeleton.num_channels
            ref = render_targets_reference(batch["keypoints"].cpu(), batch["masks"].cpu(), skeleton, cfg.targets)
            assert (batch["targets"].cpu() - ref).abs().max() <= 1e-4
