"""CrowdPose's evaluation by crowding: AP on its easy, medium and hard images.

    split = crowd_split(coco_gt, results, image_ids, skeleton.sigmas)
    # {} unless every image evaluated has a crowdIndex; else {"AP_easy": ..., "AP_medium": ...,
    #  "AP_hard": ..., "images_easy": n, "images_medium": n, "images_hard": n}

CrowdPose's json gives every image a crowdIndex: over its people, the mean of (keypoints of
other people inside the person's box) / (the person's own keypoints). Its toolkit
(crowdposetools/cocoeval.py, get_type_result) sorts images by it, easy below 0.1 in the paper's
words, and scores each group on its own: the AP of COCOeval (OKS thresholds 0.5:0.95, all areas,
20 people per image) restricted to that group's images. The toolkit's code, which produced every
published CrowdPose table (HigherHRNet, DEKR, CID, ...), draws the first line at 0.2, not at the
paper's 0.1; CROWD_SPLITS follows the code, so the numbers compare with those tables.
AP and AR over all images are COCOeval's as usual (evaluation.coco, with CrowdPose's sigmas and
its 0.53 x box areas).

An empty group (no image of it in the set) reports -1, pycocotools' "nothing to score".
"""
from evaluation.coco import evaluate_keypoints

# (name, lowest crowdIndex) in increasing order: an image belongs to the last group whose bound
# its crowdIndex reaches (the toolkit: easy < 0.2 <= medium < 0.8 <= hard)
CROWD_SPLITS = (("easy", 0.0), ("medium", 0.2), ("hard", 0.8))


def crowd_indices(coco_gt, image_ids) -> dict | None:
    """{image_id: crowdIndex} of the images, or None when some image has none (not CrowdPose)."""
    out = {}
    for image_id in image_ids:
        value = coco_gt.imgs.get(image_id, {}).get("crowdIndex")
        if not isinstance(value, (int, float)):
            return None
        out[image_id] = float(value)
    return out or None


def split_images(indices: dict) -> dict:
    """{group name: [image ids]} of {image_id: crowdIndex}, groups as CROWD_SPLITS."""
    groups = {name: [] for name, _ in CROWD_SPLITS}
    for image_id, value in indices.items():
        name = CROWD_SPLITS[0][0]
        for n, low in CROWD_SPLITS:
            if value >= low:
                name = n
        groups[name].append(image_id)
    return groups


def crowd_split(coco_gt, results: list, image_ids, sigmas) -> dict:
    """AP per crowding group (see the module), {} when the images carry no crowdIndex.

    Args:
        coco_gt: pycocotools COCO ground truth (evaluation.coco.load_coco).
        results: COCO keypoint results of the images.
        image_ids: the images evaluated.
        sigmas: [K] OKS sigmas (skeleton.sigmas).
    """
    indices = crowd_indices(coco_gt, image_ids)
    if indices is None:
        return {}
    out = {}
    for name, ids in split_images(indices).items():
        chosen = set(ids)
        mine = [r for r in results if r["image_id"] in chosen]
        out[f"AP_{name}"] = evaluate_keypoints(coco_gt, mine, ids, sigmas)["AP"] if ids else -1.0
        out[f"images_{name}"] = len(ids)
    return out


def format_split(split: dict) -> str:
    """One line: 'CrowdPose AP by crowding: easy 0.812 (12 images), medium ..., hard ...'."""
    parts = [f"{name} {split[f'AP_{name}']:.3f} ({split[f'images_{name}']} images)" if split[f"images_{name}"]
             else f"{name} - (no images)" for name, _ in CROWD_SPLITS]
    return "CrowdPose AP by crowding: " + ", ".join(parts)
