"""Optimizer and learning-rate schedule.

The schedule is a pure function of the step (`learning_rate`), set on the optimizer before every
step as nanoGPT does: resuming the step resumes the schedule, and there is no scheduler object
whose state could drift from the step counter.

    optimizer = build_optimizer(model, cfg.optim)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, steps_per_epoch, cfg.optim, world_size)
"""
import math

import torch

from training.config import OptimConfig


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the original) or AdamW, on every parameter, weight decay on all of them."""
    params = [p for p in model.parameters() if p.requires_grad]
    # lr is overwritten before every step by learning_rate(); the value here is never used
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr_per_process, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr_per_process, betas=(cfg.momentum, cfg.beta2),
                             weight_decay=cfg.weight_decay)


def learning_rate(step: int, steps_per_epoch: int, cfg: OptimConfig, world_size: int) -> float:
    """Rate for optimizer step `step` (0-based): linear scaling x warm-up x step decay.

    Warm-up: the rate grows linearly over the first warmup_epochs (in steps, at least one), the
    first step getting 1/warmup_steps of it. Decay: x decay_factor at every decay_every_epochs
    (epochs counted in steps, so a run resumed at another world size keeps the shape in epochs).
    """
    base = cfg.lr_per_process * world_size
    warmup_steps = max(1, round(cfg.warmup_epochs * steps_per_epoch))
    warmup = min(1.0, (step + 1) / warmup_steps)
    decays = math.floor(step / (cfg.decay_every_epochs * steps_per_epoch))
    return base * warmup * cfg.decay_factor ** decays
