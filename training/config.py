"""The training config: one yaml holds the pipeline, the model, the loss, the optimizer and the run.

    cfg = load_train_config("configs/tiny.yaml")      # strict: an unknown key is a UserError
    cfg.pipeline.batch_size, cfg.model.width, cfg.optim.lr_per_process, cfg.amp, ...

Sections are the stages' own dataclasses (pipelines.config.PipelineConfig, model.config.ModelConfig,
model.config.LossConfig) plus OptimConfig below; every default is the original's
(the original SimplePose training code). train_ddp.py writes the resolved config beside the
checkpoints (config.yaml) with core.config.to_dict.
"""
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.config import from_dict, load_yaml
from core.errors import UserError
from model.config import LossConfig, ModelConfig
from pipelines.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]
OPTIMIZERS = ("sgd", "adamw")
AMP_MODES = ("auto", "bf16", "fp16", "fp32")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule (training/optim.py).

    The rate in force is lr_per_process x world size (the original's linear scaling rule, for
    its 4 images per process), times a linear warm-up over the first `warmup_epochs`, times
    `decay_factor` every `decay_every_epochs` epochs.
    """
    name: str = "sgd"                  # one of OPTIMIZERS; the original trains with SGD
    lr_per_process: float = 2.5e-5
    momentum: float = 0.9              # sgd: momentum; adamw: beta1
    beta2: float = 0.999               # adamw only
    weight_decay: float = 5e-4         # on every parameter, as the original (sgd: L2; adamw: decoupled)
    warmup_epochs: float = 3.0         # linear ramp from ~0 to the full rate
    decay_every_epochs: float = 15.0   # step schedule
    decay_factor: float = 0.2
    grad_clip: float = 0.0             # maximum global gradient norm; 0 = no clipping

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, got {self.name!r}")
        if self.lr_per_process <= 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("optim.lr_per_process must be > 0, weight_decay and grad_clip >= 0")
        if self.warmup_epochs < 0 or self.decay_every_epochs <= 0 or not 0 < self.decay_factor <= 1:
            raise ValueError("optim: need warmup_epochs >= 0, decay_every_epochs > 0, 0 < decay_factor <= 1")


@dataclass(frozen=True)
class TrainConfig:
    skeleton: str = "configs/skeletons/coco.yaml"  # relative to the working folder, else to the repo
    shards: str = ""                   # training shards folder (tools/make_shards.py); --shards overrides
    out: str = "runs/train"            # checkpoints, config.yaml, log.jsonl; --out overrides
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    amp: str = "auto"                  # one of AMP_MODES; auto = bf16 on GPU, fp32 on CPU;
                                       # fp16 adds a GradScaler
    channels_last: bool = True         # NHWC activations (faster convolutions on tensor cores)
    compile: bool = False              # torch.compile the model's forward
    sync_bn: bool = False              # batch-norm statistics over all processes (GPU only)
    ema_decay: float = 0.0             # > 0: keep an exponential moving average of the weights;
                                       # checkpoints' `model` then holds the averaged weights
    epochs: int = 100                  # the facts file records no total; 100 = 6 decays of the schedule
    max_steps: int = 0                 # > 0: stop after this many optimizer steps; --max-steps overrides
    checkpoint_every: int = 1000       # steps between checkpoints (also at the end and on SIGTERM/SIGINT)
    checkpoint_minutes: float = 0.0    # > 0: also one at least this often, wall time: a preemption
                                       # loses at most this much work however long a step takes
    collective_timeout_minutes: float = 30.0  # a collective waiting longer (a rank died or froze
                                       # without torchrun noticing) stops the run with one line;
                                       # above the longest validation, which other ranks wait out
    log_every: int = 20                # steps between log lines (JSONL) and loss averages
    max_bad_steps: int = 100           # this many non-finite steps in a row stop the run
    val_shards: str = ""               # validation shards folder; --val-shards overrides; "" = no validation
    val_every: int = 0                 # steps between validations (0: only at the end); also at the end
    val_limit: int = 0                 # > 0: validate on the first N images only; --val-limit overrides
    val_flip: bool = False             # eval.py --flip
    val_scales: tuple[float, ...] = (1.0,)  # eval.py --scales
    val_batch_size: int = 8            # images per forward pass (per process)
    seed: int = 0                      # model initialization (the data has pipeline.seed)
    deterministic: bool = False        # torch.use_deterministic_algorithms (exact resume tests)

    def __post_init__(self):
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if min(self.epochs, self.checkpoint_every, self.log_every, self.max_bad_steps) < 1:
            raise ValueError("epochs, checkpoint_every, log_every and max_bad_steps must be >= 1")
        if self.checkpoint_minutes < 0 or self.collective_timeout_minutes <= 0:
            raise ValueError("checkpoint_minutes must be >= 0 and collective_timeout_minutes > 0")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if min(self.val_every, self.val_limit) < 0 or self.val_batch_size < 1:
            raise ValueError("val_every and val_limit must be >= 0, val_batch_size >= 1")
        if not self.val_scales or min(self.val_scales) <= 0:
            raise ValueError(f"val_scales must be positive numbers, got {list(self.val_scales)}")

    def resolve_amp(self, device_type: str) -> str:
        """The precision in force on `device_type` ("cuda" or "cpu"): bf16, fp16 or fp32."""
        if self.amp == "auto":
            return "bf16" if device_type == "cuda" else "fp32"
        return self.amp

    def skeleton_path(self) -> Path:
        path = Path(self.skeleton)
        return path if path.is_absolute() or path.exists() else ROOT / path


def load_train_config(path, **overrides) -> TrainConfig:
    """Read a training yaml strictly; `overrides` (e.g. shards=..., max_steps=...) replace fields."""
    cfg = from_dict(TrainConfig, load_yaml(path), str(path))
    try:
        return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
