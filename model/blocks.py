"""Building blocks of IMHN: conv-BN-activation, SE, the bottleneck residual, the stem, one hourglass.

Every block takes and returns [B, C, H, W] tensors in any memory format (contiguous or
channels_last); none of them changes the dtype, so they run as they are under torch.autocast
(BatchNorm keeps its statistics in fp32 there: cuDNN computes them in fp32 for bf16/fp16 input).
"""
import torch
from torch import nn
import torch.nn.functional as F


class ConvBNAct(nn.Sequential):
    """k x k convolution (no bias), BatchNorm, then LeakyReLU unless `act` is False."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, stride: int = 1, dilation: int = 1,
                 act: bool = True, slope: float = 0.01):
        layers = [nn.Conv2d(c_in, c_out, k, stride, padding=dilation * (k - 1) // 2,
                            dilation=dilation, bias=False),
                  nn.BatchNorm2d(c_out)]
        if act:
            layers.append(nn.LeakyReLU(slope, inplace=True))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Channel attention: x * sigmoid(MLP(mean over H, W of x)); [B, C, H, W] -> same."""

    def __init__(self, channels: int, reduction: int = 16, slope: float = 0.01):
        super().__init__()
        hidden = max(1, channels // reduction)
        # 1x1 convs rather than Linear: the [B, C, 1, 1] mean stays 4-D, whatever the memory format
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.LeakyReLU(slope, inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        gate = self.fc2(self.act(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class Residual(nn.Module):
    """Bottleneck residual block: 1x1 (c_out/2), 3x3 (c_out/2), 1x1 (c_out), [SE], + skip, LeakyReLU.

    The skip is the identity when c_in == c_out, else a 1x1 conv with BN. [B, c_in, H, W] ->
    [B, c_out, H, W].
    """

    def __init__(self, c_in: int, c_out: int, se_reduction: int = 0, slope: float = 0.01):
        super().__init__()
        mid = max(1, c_out // 2)
        self.body = nn.Sequential(
            ConvBNAct(c_in, mid, 1, slope=slope),
            ConvBNAct(mid, mid, 3, slope=slope),
            ConvBNAct(mid, c_out, 1, act=False),
            *([SqueezeExcite(c_out, se_reduction, slope)] if se_reduction else []),
        )
        self.skip = nn.Identity() if c_in == c_out else ConvBNAct(c_in, c_out, 1, act=False)
        self.act = nn.LeakyReLU(slope, inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


class Stem(nn.Module):
    """Image -> stride-4 features: [B, 3, S, S] -> [B, width, S/4, S/4].

    7x7 stride-2 conv, a residual block, 2x2 max pool, a residual block; then a context branch of
    dilated 3x3 convs whose output is concatenated to its input (width/2 channels each), which
    gives the first hourglass a large receptive field at full resolution.
    """

    def __init__(self, width: int, stem_width: int, dilations, slope: float = 0.01):
        super().__init__()
        half = width // 2
        self.head = nn.Sequential(
            ConvBNAct(3, stem_width, 7, stride=2, slope=slope),
            Residual(stem_width, half, slope=slope),
            nn.MaxPool2d(2, 2),
            Residual(half, half, slope=slope),
        )
        self.context = nn.Sequential(*[ConvBNAct(half, half, 3, dilation=d, slope=slope) for d in dilations])

    def forward(self, images):
        x = self.head(images)
        return torch.cat([x, self.context(x)], dim=1)


class HourglassLevel(nn.Module):
    """One level of an hourglass: the skip branch, the way down, and the way back up.

    Level d works at resolution R_d with c_d channels; below it sits resolution R_d / 2 with
    c_{d+1} channels.
    """

    def __init__(self, c: int, c_below: int, se_reduction: int, slope: float):
        super().__init__()
        self.skip = Residual(c, c, se_reduction, slope)
        self.down = Residual(c, c_below, se_reduction, slope)      # after a 2x2 max pool
        self.up_res = Residual(c_below, c, se_reduction, slope)    # before a nearest 2x upsampling
        self.up_conv = ConvBNAct(c, c, 3, act=False)               # smooths the upsampled map

    def up(self, below, skip):
        """below [B, c_below, R/2, R/2], skip [B, c, R, R] -> [B, c, R, R]."""
        return skip + self.up_conv(F.interpolate(self.up_res(below), scale_factor=2.0, mode="nearest"))


class Hourglass(nn.Module):
    """An hourglass of `depth` max-pool downsamplings whose width grows by `increment` per level.

    forward: [B, width, R, R] -> list over scales i = 0..depth of [B, width + i*increment, R/2**i,
    R/2**i]: scale 0 is the hourglass's output; scale i > 0 is the feature map on the way back up
    at that resolution (for i = depth, the innermost block's output).
    """

    def __init__(self, depth: int, width: int, increment: int, se_reduction: int = 0, slope: float = 0.01):
        super().__init__()
        c = [width + i * increment for i in range(depth + 1)]
        self.levels = nn.ModuleList(HourglassLevel(c[d], c[d + 1], se_reduction, slope) for d in range(depth))
        self.inner = Residual(c[depth], c[depth], se_reduction, slope)

    def forward(self, x):
        skips = []
        for level in self.levels:
            skips.append(level.skip(x))
            x = level.down(F.max_pool2d(x, 2))
        x = self.inner(x)
        coarse_to_fine = [x]
        for level, skip in zip(reversed(self.levels), reversed(skips)):
            x = level.up(x, skip)
            coarse_to_fine.append(x)
        return coarse_to_fine[::-1]


class ScaleHead(nn.Sequential):
    """Per-scale features before the prediction: [B, c_in, h, w] -> [B, width, h, w].

    Two 3x3 conv-BN-LeakyReLU then squeeze-and-excitation (the original's "features" block).
    """

    def __init__(self, c_in: int, width: int, se_reduction: int, slope: float):
        super().__init__(ConvBNAct(c_in, width, 3, slope=slope),
                         ConvBNAct(width, width, 3, slope=slope),
                         SqueezeExcite(width, se_reduction, slope))
