"""Configs of the network (ModelConfig) and of its loss (LossConfig); defaults are the paper's.

A training yaml has `model:` and `loss:` sections; `configs/model/*.yaml` hold a ModelConfig
mapping alone. Both are read strictly with core.config.from_dict (an unknown key is an error):

    from core.config import from_dict, load_yaml
    cfg = from_dict(ModelConfig, load_yaml("configs/model/imhn.yaml"), "configs/model/imhn.yaml")
"""
from dataclasses import dataclass

# The stem brings the input to stride 4 (a stride-2 7x7 conv, then a 2x2 max pool): the finest
# output map has S/4 cells a side, the resolution of the targets (pipelines.targets.TargetConfig.stride).
STRIDE = 4


@dataclass
class ModelConfig:
    """IMHN: stacked hourglasses whose width grows at each downsampling, supervised at several scales.

    Scale i (0 = finest, S/4 a side) of every stack has its own head; the hourglass features at
    scale i have `width + i * increment` channels.
    """
    num_stacks: int = 4            # hourglasses in sequence, each refining the previous one's maps
    depth: int = 4                 # downsamplings (max pool 2x2) inside one hourglass
    width: int = 256               # channels at the hourglass's full resolution (S/4)
    increment: int = 128           # channels added at each downsampling (256, 384, 512, 640, 768)
    num_scales: int = 5            # supervised scales per stack, finest first (at most depth + 1)
    se_reduction: int = 16         # squeeze-and-excitation bottleneck: channels / se_reduction
    se_in_residual: bool = False   # SE inside every residual block too (the original has it only
                                   # in the per-scale heads; True adds ~1% parameters)
    stem_width: int = 64           # channels of the stem's first (7x7, stride 2) convolution
    stem_dilations: tuple[int, ...] = (3, 3, 4, 4, 5, 5)  # dilated 3x3 convs of the stem's context branch
    leaky_slope: float = 0.01      # negative slope of every LeakyReLU

    def __post_init__(self):
        if min(self.num_stacks, self.depth, self.width, self.num_scales, self.se_reduction,
               self.stem_width) < 1 or self.increment < 0:
            raise ValueError("num_stacks, depth, width, num_scales, se_reduction and stem_width must "
                             "be positive and increment not negative")
        if self.num_scales > self.depth + 1:
            raise ValueError(f"num_scales {self.num_scales} needs depth >= {self.num_scales - 1} "
                             f"(an hourglass of depth {self.depth} has {self.depth + 1} scales)")
        if self.width % 2:
            raise ValueError(f"width {self.width} must be even (the stem concatenates two halves)")
        if any(not isinstance(d, int) or d < 1 for d in self.stem_dilations):
            raise ValueError(f"stem_dilations {self.stem_dilations} must be positive integers")

    @property
    def stride(self) -> int:
        """Input pixels per cell of the finest output map."""
        return STRIDE

    @property
    def input_multiple(self) -> int:
        """The input side must be a multiple of this (stem stride times the hourglass's 2**depth)."""
        return STRIDE * 2 ** self.depth

    def scale_width(self, scale: int) -> int:
        """Channels of the hourglass features at `scale` (0 = finest)."""
        return self.width + scale * self.increment


@dataclass
class LossConfig:
    """Focal L2 on every channel, every scale and every stack (see model/loss.py).

    form "paper": focusing factor |1 - s_t|**gamma with s_t = s - alpha where the target is
    >= positive_threshold and s_t = 1 - s - beta elsewhere (gamma, alpha, beta below are the
    paper's). form "code": the released code's simplified form, the same formula with gamma = 1 and
    alpha = beta = 0 whatever the fields say. gamma = 0 turns the focusing off (plain masked L2).
    """
    form: str = "paper"
    gamma: float = 2.0
    alpha: float = 0.1
    beta: float = 0.02
    positive_threshold: float = 0.01   # target value from which a pixel counts as foreground
    keypoint_weight: float = 3.0       # channel weight of the keypoint heatmaps
    person_mask_weight: float = 0.1    # channel weight of the person-mask channel
    limb_weight: float = 1.0           # channel weight of the limb maps
    keypoint_max_weight: float = 1.0   # channel weight of the keypoint-maximum channel
    scale_weights: tuple[float, ...] = (0.1, 0.2, 0.4, 1.6, 6.4)  # finest scale (S/4) first, then each /2
    mask_threshold: float = 0.5        # a resized loss mask below this counts as ignored (0)

    def __post_init__(self):
        if self.form not in ("paper", "code"):
            raise ValueError(f"form must be 'paper' or 'code', not {self.form!r}")
        if not self.scale_weights or any(w < 0 for w in self.scale_weights) or sum(self.scale_weights) <= 0:
            raise ValueError(f"scale_weights {self.scale_weights} must be non-negative with a positive sum")
        if not (self.gamma == 0 or self.gamma >= 1):
            # a power below 1 has an infinite slope where the factor is 0 (NaN gradients)
            raise ValueError(f"gamma {self.gamma} must be 0 (no focusing) or at least 1")

    def focal_constants(self) -> tuple:
        """(gamma, alpha, beta) in force for this form."""
        return (self.gamma, self.alpha, self.beta) if self.form == "paper" else (1.0, 0.0, 0.0)
