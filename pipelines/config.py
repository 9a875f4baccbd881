"""The data pipeline's configuration: input size, batch, people per sample, augmentation, targets.

Defaults are the original's (simplepose_facts.md, "Augmentation"); a yaml only overrides them:

    from core.config import from_dict, load_yaml
    cfg = from_dict(PipelineConfig, load_yaml("configs/pipeline/coco.yaml"), "configs/pipeline/coco.yaml")

The training yaml nests the same keys under `pipeline:`.
"""
from dataclasses import dataclass, field

from pipelines.targets import TargetConfig

CENTER_MODES = ("person", "random", "image", "frame")
IMAGE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class AugmentConfig:
    """One random affine per sample (scale, rotation, shift, flip) and a colour tint.

    The scale is applied on top of a normalization: with center = "person" a random main
    person (at least `main_min_keypoints` labelled keypoints) is scaled so that the larger side
    of its keypoint box is `target_dist` x input size, and the crop is centred on it; without
    such a person (or with "image") the whole image is fitted into the input; "random" scales
    the shorter image side to the input and centres the crop on a uniformly random point;
    "frame" is eval.py's inference frame (core/frame.py: image height = input size, image at the
    left, padded on the right; a wider image cropped at a uniformly random horizontal offset), so
    a model trained without the random parts is evaluated in exactly the frame it learned.
    """
    scale_prob: float = 0.8          # probability of a random scale (else 1)
    scale_min: float = 0.7           # random scale range, multiplies the normalized scale
    scale_max: float = 1.3
    target_dist: float = 0.6         # main person's keypoint-box size / input size before the random scale
    max_upscale: float = 4.0         # cap on the person normalization, output px per original px
    main_min_keypoints: int = 5      # labelled keypoints a person needs to be the main person
    max_rotation: float = 40.0       # degrees; the angle is uniform in [-max, max]
    max_shift: float = 50.0          # original pixels; the crop centre moves uniformly in [-max, max] per axis
    flip_prob: float = 0.5           # horizontal flip (left/right keypoints swapped)
    tint_prob: float = 0.2           # colour tint: per-channel gains ...
    tint_strength: float = 0.2       # ... uniform in [1 - strength, 1 + strength]
    center: str = "person"           # one of CENTER_MODES: the normalization before the random parts

    def __post_init__(self):
        if self.center not in CENTER_MODES:
            raise ValueError(f"center must be one of {', '.join(CENTER_MODES)}, got {self.center!r}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")
        for name in ("scale_prob", "flip_prob", "tint_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.tint_strength < 1:
            raise ValueError(f"tint_strength must be in [0, 1), got {self.tint_strength}")
        if self.target_dist <= 0 or self.max_upscale <= 0:
            raise ValueError("target_dist and max_upscale must be positive")
        if self.max_rotation < 0 or self.max_shift < 0:
            raise ValueError("max_rotation and max_shift must be >= 0")


@dataclass(frozen=True)
class PipelineConfig:
    input_size: int = 512            # S: network input is S x S; maps are S / stride
    batch_size: int = 8              # per process (rank)
    max_people: int = 20             # Pmax: keypoint rows per sample; more people keep the largest
    seed: int = 0                    # with the epoch and the rank, fixes every shuffle and augmentation
    num_threads: int = 4             # DALI CPU worker threads per process
    shuffle_buffer: int = 1024       # samples in the reader's shuffle buffer (per process)
    prefetch: int = 2                # batches DALI prepares ahead
    mean: tuple[float, ...] = (123.675, 116.28, 103.53)  # RGB, 0..255: images = (pixel - mean) / std
    std: tuple[float, ...] = (58.395, 57.12, 57.375)
    fill: float = 128.0              # pixel value (0..255) outside the warped image
    image_dtype: str = "float32"     # one of IMAGE_DTYPES ("float16" halves the batch on GPU)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)

    def __post_init__(self):
        stride = self.targets.stride
        if self.input_size <= 0 or self.input_size % stride:
            raise ValueError(f"input_size must be a positive multiple of targets.stride ({stride}), "
                             f"got {self.input_size}")
        for name in ("batch_size", "max_people", "num_threads", "shuffle_buffer", "prefetch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 values each (RGB), std > 0")
        if self.image_dtype not in IMAGE_DTYPES:
            raise ValueError(f"image_dtype must be one of {', '.join(IMAGE_DTYPES)}, got {self.image_dtype!r}")

    @property
    def map_size(self) -> int:
        """S / stride: side of the masks and target maps."""
        return self.input_size // self.targets.stride
