"""GroupingConfig: thresholds of peak finding, limb scoring and assembly.

Defaults are the original's (simplepose_facts.md, "Grouping and evaluation") except where a
comment says why ours differs. Map values are the network's raw outputs (targets lie in [0, 1]).
"""
from dataclasses import dataclass


@dataclass
class GroupingConfig:
    # -- peaks (grouping/peaks.py) --------------------------------------------------------
    peak_threshold: float = 0.1       # a keypoint candidate is a local maximum at least this high
    nms_window: int = 3               # a candidate is the maximum of the window of this side
                                      # around it, map cells (odd; sigma 9 px = 2.25 cells)
    max_peaks: int = 32               # candidates kept per keypoint type and image, the highest
                                      # (COCOeval counts 20 people per image); 0 keeps all
    refine: bool = True               # sub-pixel position from a parabola through log(value) on
                                      # each axis: exact for a Gaussian (the original swapped x/y)

    # -- limbs (grouping/limbs.py) --------------------------------------------------------
    limb_samples: int = 20            # points sampled along the segment between two candidates
    limb_sample_threshold: float = 0.1  # a sample counts as "on the limb" above this value
    limb_min_fraction: float = 0.8    # ... and at least this fraction of the samples must be on it
    limb_length_ratio: float = 0.5    # segments longer than this x the image height are penalized:
                                      # score += min(0, ratio * height / length - 1) (the original's
                                      # prior, with the height named as such)

    # -- assembly (grouping/assemble.py) ---------------------------------------------------
    min_keypoints: int = 1            # the original kept people with >= 2 parts, so a person with
                                      # one labelled keypoint could never be found; a lone peak is
                                      # a person here, ranked below every multi-keypoint one
    min_mean_score: float = 0.45      # drop a person whose mean score (its peaks' and its
                                      # connections' scores together) is below this
    fragment_max_keypoints: int = 2   # fragments this small may join a larger person nearby
                                      # (grouping/assemble.py step 3; 0 turns it off)
    fragment_distance: float = 1.5    # ... when gap / (limbs to bridge it x the person's mean
                                      # limb length) is at most this
    single_score_scale: float = 0.25  # a one-keypoint person's score 1 - 1/(1 + peak) is scaled
                                      # by this (<= 0.125), below people with connections (0.75
                                      # for one ideal connection), so lone peaks rank last

    def __post_init__(self):
        if self.nms_window < 1 or self.nms_window % 2 == 0:
            raise ValueError(f"nms_window {self.nms_window} must be a positive odd number of cells")
        if self.limb_samples < 2:
            raise ValueError(f"limb_samples {self.limb_samples} must be at least 2 (the two ends)")
        if not 0 <= self.limb_min_fraction <= 1:
            raise ValueError(f"limb_min_fraction {self.limb_min_fraction} must lie in [0, 1]")
        if self.min_keypoints < 1:
            raise ValueError(f"min_keypoints {self.min_keypoints} must be at least 1")
