"""IMHN: the improved multi-scale hourglass network of SimplePose.

    images [B, 3, S, S] -> stem (stride 4) -> N hourglasses, each supervised at several scales
    -> list over stacks of list over scales of raw maps [B, C, S/4/2**i, S/4/2**i]

C = skeleton.num_channels (limbs | keypoints | person mask | keypoint maximum, in the order of
core.skeleton.Skeleton.channel_slices). Between stacks, each scale's prediction and features are
mapped back (1x1 conv + BN) and added to the next hourglass's features at that scale; at the
finest scale they are also added to the next hourglass's input. Outputs are raw (no sigmoid),
as in the original; the loss compares them to targets in [0, 1] directly.

    model = build_model(ModelConfig(), skeleton.num_channels, device="cuda", channels_last=True)
    with torch.autocast("cuda", torch.bfloat16):
        outputs = model(images)          # training: every stack, every scale
    maps = model.predict(images)         # inference: last stack, finest scale [B, C, S/4, S/4]
"""
import torch
from torch import nn

from model.blocks import ConvBNAct, Hourglass, ScaleHead, Stem
from model.config import ModelConfig


class IMHN(nn.Module):
    def __init__(self, cfg: ModelConfig, num_channels: int):
        super().__init__()
        self.cfg = cfg
        self.num_channels = num_channels
        se_res = cfg.se_reduction if cfg.se_in_residual else 0
        slope = cfg.leaky_slope
        scales = range(cfg.num_scales)
        widths = [cfg.scale_width(i) for i in scales]
        self.stem = Stem(cfg.width, cfg.stem_width, cfg.stem_dilations, slope)
        self.hourglasses = nn.ModuleList(
            Hourglass(cfg.depth, cfg.width, cfg.increment, se_res, slope) for _ in range(cfg.num_stacks))
        self.features = nn.ModuleList(
            nn.ModuleList(ScaleHead(widths[i], cfg.width, cfg.se_reduction, slope) for i in scales)
            for _ in range(cfg.num_stacks))
        self.outs = nn.ModuleList(
            nn.ModuleList(nn.Conv2d(cfg.width, num_channels, 1) for _ in scales) for _ in range(cfg.num_stacks))
        # feedback from stack k to stack k + 1 (none after the last one)
        self.merge_preds = nn.ModuleList(
            nn.ModuleList(ConvBNAct(num_channels, widths[i], 1, act=False) for i in scales)
            for _ in range(cfg.num_stacks - 1))
        self.merge_features = nn.ModuleList(
            nn.ModuleList(ConvBNAct(cfg.width, widths[i], 1, act=False) for i in scales)
            for _ in range(cfg.num_stacks - 1))
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=self.cfg.leaky_slope, mode="fan_out",
                                        nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # prediction heads start near 0: targets are 0 almost everywhere, so the first steps
        # are not spent unlearning large random maps
        for head in self.outs:
            for conv in head:
                nn.init.normal_(conv.weight, std=1e-3)

    def forward(self, images: torch.Tensor) -> list:
        """images [B, 3, S, S] -> outputs[stack][scale]: [B, C, S/4/2**scale, S/4/2**scale]."""
        return self._run(images, self.cfg.num_scales)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, S, S] -> [B, C, S/4, S/4]: the last stack's finest maps (the inference graph).

        Runs only the finest head of every stack: the coarser heads feed their own loss terms and
        the next stack's coarser features, which reach the next stack's finest maps by no path
        (the next hourglass's input only gets the finest scale's feedback). For the paper model at
        512 that is 456 instead of 529 GFLOP per image, and 96 M of its 129 M parameters.
        """
        return self._run(images, 1)[-1][0]

    def _run(self, images, num_scales: int) -> list:
        """outputs[stack][scale] for the `num_scales` finest scales of every stack."""
        self._check_input(images)
        x = self.stem(images)
        feedback = None  # per scale: what stack k adds to stack k + 1's hourglass features
        outputs = []
        for k, hourglass in enumerate(self.hourglasses):
            last = k == self.cfg.num_stacks - 1
            feats = hourglass(x)[:num_scales]
            if feedback is not None:
                feats = [f + b for f, b in zip(feats, feedback)]
            preds, feedback = [], []
            for i in range(num_scales):
                h = self.features[k][i](feats[i])
                preds.append(self.outs[k][i](h))
                if not last:
                    feedback.append(self.merge_preds[k][i](preds[i]) + self.merge_features[k][i](h))
            if not last:
                x = x + feedback[0]
            outputs.append(preds)
        return outputs

    def _check_input(self, images):
        m = self.cfg.input_multiple
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-1] % m or images.shape[-2] % m:
            raise ValueError(f"IMHN expects images [B, 3, H, W] with H and W multiples of {m} "
                             f"(stride 4 x 2**depth), got {list(images.shape)}")


def build_model(cfg: ModelConfig, num_channels: int, device="cpu", channels_last: bool = False,
                compile: bool = False) -> IMHN:
    """IMHN on `device`, optionally in channels_last memory format and compiled.

    `compile` compiles the module in place (nn.Module.compile), so its state_dict keeps the plain
    parameter names and checkpoints stay loadable without torch.compile. Only `forward` (training)
    is compiled; `predict` runs eagerly.
    """
    model = IMHN(cfg, num_channels).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model.compile()
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
