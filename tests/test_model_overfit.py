"""The tiny IMHN overfits one real batch on the CPU: the loss falls at least 10x in a few hundred steps.

The batch is built here without the DALI pipeline: four sample images resized to 128 x 128 with
cv2, their keypoints scaled alike, person and ignore masks from the COCO annotations, targets
rendered by pipelines.targets.render_targets.
"""
import json
from collections import defaultdict

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils

from core.config import from_dict, load_yaml
from model.config import LossConfig, ModelConfig
from model.imhn import build_model
from model.loss import multiscale_loss
from pipelines.config import PipelineConfig
from pipelines.targets import TargetConfig, render_targets

SIZE = 128  # input side; maps are SIZE / 4


def real_batch(sample_dir, skeleton, n=4, size=SIZE, split="train"):
    """(images [n,3,S,S], keypoints [n,P,K',3] input px, masks [n,2,S/4,S/4]) from the sample's first
    n images with both a labelled person and an ignored region (a crowd or an unlabelled person)."""
    ann_file = sample_dir / "annotations" / f"person_keypoints_{split}2017.json"
    data = json.loads(ann_file.read_text())
    anns = defaultdict(list)
    for a in data["annotations"]:
        anns[a["image_id"]].append(a)
    infos = [im for im in sorted(data["images"], key=lambda im: im["id"])
             if any(a["num_keypoints"] > 0 for a in anns[im["id"]])
             and any(a["iscrowd"] or a["num_keypoints"] == 0 for a in anns[im["id"]])][:n]
    m = size // TargetConfig().stride
    norm = PipelineConfig()  # the training pipeline's mean and std (RGB, 0..255)
    images, kpts, masks = [], [], []
    for im in infos:
        h, w = im["height"], im["width"]
        bgr = cv2.imread(str(sample_dir / f"{split}2017" / im["file_name"]))
        rgb = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)[..., ::-1]
        images.append(torch.from_numpy(((rgb - norm.mean) / norm.std).transpose(2, 0, 1).astype(np.float32)))
        labelled = [a for a in anns[im["id"]] if a["num_keypoints"] > 0]
        k = np.array([a["keypoints"] for a in labelled], np.float32).reshape(len(labelled), -1, 3)
        k[..., 0] *= size / w  # resize: pixel-centre to pixel-centre, up to half a pixel
        k[..., 1] *= size / h
        kpts.append(skeleton.add_derived(torch.from_numpy(k)))
        person, ignore = np.zeros((h, w), bool), np.zeros((h, w), bool)
        for a in anns[im["id"]]:
            seg = a["segmentation"]
            rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg, list) else (
                mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg)
            area = mask_utils.decode(rle)
            area = (area.max(axis=2) if area.ndim == 3 else area).astype(bool)
            person |= area
            if a["iscrowd"] or a["num_keypoints"] == 0:
                ignore |= area
        small = [cv2.resize(x.astype(np.uint8), (m, m), interpolation=cv2.INTER_NEAREST) for x in (ignore, person)]
        masks.append(torch.from_numpy(np.stack([1 - small[0], small[1]]).astype(np.float32)))
    P = max(len(k) for k in kpts)
    keypoints = torch.zeros(len(kpts), P, skeleton.num_keypoints, 3)
    for i, k in enumerate(kpts):
        keypoints[i, : len(k)] = k
    return torch.stack(images), keypoints, torch.stack(masks)


def test_real_batch_targets_are_sane(sample_dir, skeleton):
    images, keypoints, masks = real_batch(sample_dir, skeleton)
    targets = render_targets(keypoints, masks, skeleton, TargetConfig())
    assert images.shape == (4, 3, SIZE, SIZE) and targets.shape == (4, skeleton.num_channels, SIZE // 4, SIZE // 4)
    kp = skeleton.channel_slices()["keypoints"]
    assert (targets[:, kp].amax(dim=(1, 2, 3)) > 0.5).all()  # every image has a keypoint peak
    assert set(masks[:, 0].unique().tolist()) == {0.0, 1.0}    # ignored cells exist; weights 0/1
    assert (masks[:, 1] * (1 - masks[:, 0])).sum() > 0         # crowds are people too


def test_tiny_model_overfits_one_real_batch(sample_dir, skeleton):
    torch.manual_seed(0)
    images, keypoints, masks = real_batch(sample_dir, skeleton)
    targets = render_targets(keypoints, masks, skeleton, TargetConfig())
    cfg = from_dict(ModelConfig, load_yaml("configs/model/tiny.yaml"), "tiny.yaml")
    model = build_model(cfg, skeleton.num_channels).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    loss_cfg = LossConfig()  # the paper's focal L2
    losses = []
    for step in range(300):
        loss, _ = multiscale_loss(model(images), targets, masks[:, :1], skeleton, loss_cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if np.mean(losses[-5:]) <= losses[0] / 10:  # five steps in a row average 10x below the start
            break
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) <= losses[0] / 10, (losses[0], losses[-5:], len(losses))
