"""Distributed mixed-precision training of IMHN (SimplePose), resumable, with the data wait measured.

    torchrun --nproc_per_node=8 train_ddp.py --config configs/imhn512.yaml --shards DIR --out runs/imhn512
    torchrun --nproc_per_node=2 train_ddp.py --config configs/tiny.yaml --max-steps 200
    python train_ddp.py --config configs/tiny.yaml            # one process, no torchrun needed
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
        train_ddp.py --config ...                            # the same line on every node
    ... --resume                                             # continue from OUT/last.pt
    torchrun --max-restarts=3 ... --resume auto              # continue if OUT/last.pt exists, else start
    ... --verify-shards                                      # sha256 of every shard before training
    ... --val-shards DIR [--val-limit N]                     # COCO AP every val_every steps, best.pt
    ... --skeleton configs/skeletons/crowdpose.yaml          # instead of the config's `skeleton`

The process group comes from torchrun's environment only (NCCL on GPU, gloo on CPU). Each rank
reads its own part of the shards; every rank takes the same number of steps per epoch. Training
and validation shards made for other keypoints than the skeleton's stop the command before any
work (one line, exit 2), as does a last.pt trained for another skeleton.

OUT (--out, else the config's `out`) receives config.yaml (the resolved config), log.jsonl (one
JSON object per line, rank 0; fields in training/log.py) and last.pt, the checkpoint: written
every checkpoint_every steps, at the end, and after the step in progress when SIGTERM or SIGINT
arrives, always under a temporary name and then renamed. It holds the weights for inference
(`model`: the averaged ones when ema_decay > 0), and everything --resume restores: the training
weights, optimizer, grad scaler, step and epoch (the learning rate is a function of the step),
every rank's data position and random generator states.

With validation shards (--val-shards or `val_shards`), every `val_every` steps and at the end the
inference weights are scored by eval.py's own code (training/validation.py: the same frame,
flip, scales and grouping; every rank its share of the images, one COCOeval on rank 0). The ten
COCO numbers go to log.jsonl (kind "val"), AP to the progress bar, and OUT/best.pt (inference
fields only: `python eval.py --weights OUT/best.pt`) is rewritten, atomically, whenever AP
improves. Validation time is logged on its own line and counts neither as step time nor as data wait.

Faults. The same command line must both start a run and continue it, because torchrun
(--max-restarts) and schedulers (a requeue) restart by rerunning it: `--resume auto` does that.
checkpoint_minutes bounds the work a preemption loses in wall time; a save killed half-way leaves
the previous last.pt whole (written under a temporary name, then renamed). Training shards are
checked against the manifest before training (sizes; sha256 with --verify-shards) and before each
epoch (sizes); a shard that fails to read is named when it no longer matches (one line, exit 2).
A rank that dies or freezes in a collective makes the others stop after collective_timeout_minutes
at most, with one line and exit status 1, so torchrun can restart them all.

A step whose gradient is not finite (NaN/inf loss on any rank, or an fp16 overflow) is skipped
and counted; max_bad_steps of them in a row stop the run, leaving the last checkpoint as it was.
"""
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from core.config import to_dict
from core.errors import ArgumentParser, Fault, UserError, run_cli
from core.files import write_text_atomic
from core.skeleton import Skeleton, load_skeleton
from evaluation.sources import ShardSource
from model.checkpoint import load_checkpoint, save_checkpoint
from model.imhn import build_model
from model.loss import multiscale_loss
from pipelines.loader import make_loader
from pipelines.target_check import check_gpu_path
from shards.integrity import require_intact
from shards.reader import check_skeleton, read_manifest_strict
from training.config import TrainConfig, load_train_config
from training.distributed import (Dist, any_rank, barrier, gather_objects, init_distributed, lost_rank,
                                  mean_over_ranks, on_every_rank, ranks_agree, shutdown)
from training.ema import EMA
from training.log import BusySampler, IntervalMeter, JsonlLog, gpu_busy_sampler, gpu_stats
from training.optim import build_optimizer, learning_rate
from training.rng import rng_state, set_rng_state
from training.signals import StopRequest
from training.validation import Validator

CHECKPOINT = "last.pt"
BEST = "best.pt"
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Run:
    """Everything the loop changes, and what it needs to change it."""
    cfg: TrainConfig
    dist: Dist
    skeleton: Skeleton
    model: torch.nn.Module          # the plain module: its state_dict is what checkpoints hold
    net: torch.nn.Module            # what the forward goes through (DDP-wrapped and/or compiled)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler    # enabled only for fp16
    ema: EMA | None
    amp: str                        # bf16 | fp16 | fp32, resolved for the device
    out: Path
    step: int = 0                   # optimizer steps taken (skipped ones included)
    epoch: int = 0
    epoch_batches: int = 0          # batches of the current epoch taken (the loader counts them too)
    bad_steps: int = 0              # non-finite steps so far
    bad_streak: int = 0             # ... in a row, up to now
    saved_step: int | None = None   # step of the checkpoint on disk
    saved_at: float = field(default_factory=time.monotonic)  # when it was written (or the run began)
    gpu_busy: BusySampler | None = None  # rank 0 on GPU: utilization samples for the log
    validator: Validator | None = None   # with validation shards
    best_ap: float = -1.0           # best validation AP so far (read back from best.pt on resume)
    last_ap: float | None = None    # the latest validation AP, shown on the progress bar


def train_step(run: Run, batch: dict, lr: float):
    """One optimizer step on one batch. Returns ([scales + 1] loss parts and grad norm, ok).

    ok is False when the gradient is not finite: the step is skipped (weights, momentum and
    EMA untouched), and under fp16 the grad scaler lowers its scale.
    """
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    images = batch["images"]
    if run.cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    if run.amp == "fp32":
        images = images.float()  # the pipeline may hand fp16 images on GPU
    with torch.autocast(run.dist.device.type, dtype=AMP_DTYPES[run.amp], enabled=run.amp != "fp32"):
        outputs = run.net(images)
    # the loss itself runs in fp32 whatever the outputs' dtype (model/loss.py)
    loss, parts = multiscale_loss(outputs, batch["targets"], batch["masks"][:, :1], run.skeleton,
                                  run.cfg.loss)
    run.scaler.scale(loss).backward()  # DDP averages the gradients over the ranks here
    run.scaler.unscale_(run.optimizer)
    # the gradients are the same on every rank after the all-reduce, so every rank takes the
    # same decision without another collective; one NaN rank makes them all NaN
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.optim.grad_clip or math.inf)
    ok = bool(torch.isfinite(grad_norm))  # the step's one host sync: skipping needs the answer
    if ok:
        run.scaler.step(run.optimizer)
        if run.ema is not None:
            run.ema.update()
    run.scaler.update()  # fp16: halves the scale after an overflow, grows it after a good streak
    run.optimizer.zero_grad(set_to_none=True)
    return torch.stack([*parts.values(), grad_norm]).detach().float(), ok


def fit(run: Run, loader, log: JsonlLog, stop: StopRequest):
    """The loop: epochs of len(loader) steps until max_steps, a stop signal or a streak of bad steps."""
    cfg, d = run.cfg, run.dist
    steps_per_epoch = len(loader)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    log.write("start", step=run.step, total_steps=total, steps_per_epoch=steps_per_epoch,
              world_size=d.world_size, device=str(d.device), amp=run.amp,
              global_batch=cfg.pipeline.batch_size * d.world_size,
              val_images=len(run.validator) if run.validator else 0)
    # closed on the way out of any error too, so the error line starts a line of its own
    with tqdm(total=total, initial=run.step, disable=not d.is_main, unit="step", dynamic_ncols=True) as bar:
        meter = IntervalMeter()
        reason = "done" if run.step >= total else None
        while reason is None:
            for batch in meter.timed(loader):
                lr = learning_rate(run.step, steps_per_epoch, cfg.optim, d.world_size)
                values, ok = train_step(run, batch, lr)
                run.step += 1
                run.epoch_batches += 1
                run.bad_streak = 0 if ok else run.bad_streak + 1
                run.bad_steps += not ok
                meter.add(values, ok)
                bar.update()
                if run.epoch_batches == steps_per_epoch:  # the epoch is over: the next one reshuffles
                    run.epoch, run.epoch_batches = run.epoch + 1, 0
                    loader.set_epoch(run.epoch)
                if run.step % cfg.log_every == 0 or run.step == total:
                    report(run, meter, lr, log, bar)
                if run.bad_streak >= cfg.max_bad_steps:
                    raise_bad_streak(run, log)
                # every rank takes both decisions after the same step (one collective for the two)
                stopping, time_due = any_rank(d, stop.requested is not None, checkpoint_due(run))
                if run.step >= total:
                    reason = "done"
                elif stopping:
                    reason = f"stopped by {stop.requested or 'a signal to another rank'}"
                # no periodic checkpoint inside a streak of bad steps: the last good one stays on disk
                if reason or ((run.step % cfg.checkpoint_every == 0 or time_due) and run.bad_streak == 0):
                    save(run, loader, log)
                # after the save: a preemption during validation loses no training; not on a signal,
                # which wants the process gone soon
                if run.validator and (reason == "done" or (cfg.val_every and run.step % cfg.val_every == 0)):
                    meter.exclude(validate(run, log, bar))
                if reason or run.epoch_batches == 0:
                    break
    seen = gather_objects(d, loader.stats())  # samples of this run, and how many had more than Pmax people
    log.write("stop", step=run.step, reason=reason, bad_steps=run.bad_steps,
              samples=sum(s["samples"] for s in seen),
              over_max_people=sum(s["over_max_people"] for s in seen))
    if d.is_main:
        print(f"stopped at step {run.step} ({reason}); checkpoint {run.out / CHECKPOINT}", file=sys.stderr)


def checkpoint_due(run: Run) -> bool:
    """Whether checkpoint_minutes of wall time have passed since the last save (or the start)."""
    minutes = run.cfg.checkpoint_minutes
    return minutes > 0 and time.monotonic() - run.saved_at >= 60 * minutes


def report(run: Run, meter: IntervalMeter, lr: float, log: JsonlLog, bar):
    """Average the interval's losses and data wait over the ranks; rank 0 logs them."""
    wall, wait, steps, sums, good = meter.flush()
    # the same `good` on every rank (see train_step), so they all join this collective or none do
    stats = {}
    if good:
        means = mean_over_ranks(run.dist, torch.cat([sums / good, sums.new_tensor([wait / wall])]))
        *parts, grad_norm, data_wait = means.tolist()
        stats = {"loss": sum(parts), **{f"loss_scale{i}": p for i, p in enumerate(parts)},
                 "grad_norm": grad_norm, "data_wait": data_wait}
    images_per_s = steps * run.cfg.pipeline.batch_size * run.dist.world_size / wall
    log.write("train", step=run.step, epoch=run.epoch, lr=lr, **stats, bad_steps=run.bad_steps,
              images_per_s=images_per_s, step_ms=1000 * wall / steps, **gpu_stats(run.dist.device, run.gpu_busy))
    if stats:
        ap = {} if run.last_ap is None else {"AP": f"{run.last_ap:.3f}"}
        bar.set_postfix(loss=f"{stats['loss']:.4g}", img_s=f"{images_per_s:.1f}",
                        wait=f"{100 * stats['data_wait']:.0f}%", **ap, refresh=False)


def validate(run: Run, log: JsonlLog, bar) -> float:
    """Score the inference weights on the val shards (all ranks); rank 0 logs the numbers and
    writes OUT/best.pt when AP improves. Returns the seconds it took, the same on every rank."""
    start = time.perf_counter()
    fields = inference_fields(run)
    stats = run.validator(fields)
    if run.dist.is_main:
        improved = stats["AP"] > run.best_ap
        log.write("val", step=run.step, epoch=run.epoch, **stats, best=improved)
        run.last_ap = stats["AP"]  # on the bar from the next report on
        if improved:
            run.best_ap = stats["AP"]
            save_checkpoint({**fields, "step": run.step, "val": stats}, run.out / BEST)
        bar.write(f"step {run.step}: val AP {stats['AP']:.3f} AP50 {stats['AP50']:.3f} AR {stats['AR']:.3f} "
                  f"({stats['images']} images, {stats['seconds']:.1f} s)" + (f" -> {BEST}" if improved else ""))
    barrier(run.dist)  # best.pt complete before any rank goes on (or exits)
    return time.perf_counter() - start


def raise_bad_streak(run: Run, log: JsonlLog):
    path = run.out / CHECKPOINT
    kept = (f"the last good checkpoint {path} (step {run.saved_step}) is untouched"
            if run.saved_step is not None else "no checkpoint had been written yet")
    log.write("stop", step=run.step, reason="bad streak", bad_steps=run.bad_steps)
    raise UserError(f"{run.bad_streak} steps in a row (up to step {run.step}) had a non-finite loss or "
                    f"gradient; stopped: {kept}. Lower optim.lr_per_process, set optim.grad_clip, "
                    f"or try amp: fp32")


def save(run: Run, loader, log: JsonlLog):
    """Every rank hands its data position and RNG states to rank 0, which writes OUT/last.pt."""
    d = run.dist
    data = gather_objects(d, loader.state_dict())
    rngs = gather_objects(d, rng_state())
    identical = ranks_agree(d, run.model)
    if d.is_main:
        ckpt = {**inference_fields(run),
                "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
                "step": run.step, "epoch": run.epoch,
                "epoch_batches": run.epoch_batches, "bad_steps": run.bad_steps,
                "world_size": d.world_size, "data": data, "rng": rngs}
        if run.ema:
            ckpt["train_model"] = run.model.state_dict()
            ckpt["ema_updates"] = run.ema.updates
        path = save_checkpoint(ckpt, run.out / CHECKPOINT)
        log.write("checkpoint", step=run.step, path=str(path), ranks_identical=identical)
        if not identical:
            print(f"warning: the ranks' weights differ at step {run.step}", file=sys.stderr)
    run.saved_step, run.saved_at = run.step, time.monotonic()
    barrier(d)  # nobody exits (on SIGTERM) before the file is complete


def inference_fields(run: Run) -> dict:
    """What eval.py and demo.py read from a checkpoint (model.checkpoint): the weights to use for
    inference (the EMA's when there is one), the model config, the skeleton, the input size
    (the inference frame's height) and the training config (its normalization)."""
    return {"model": run.ema.shadow if run.ema else run.model.state_dict(),
            "model_config": to_dict(run.cfg.model), "skeleton": run.skeleton.to_dict(),
            "input_size": run.cfg.pipeline.input_size, "config": to_dict(run.cfg)}


def resume(run: Run, ckpt: dict, loader):
    """Restore what save() wrote; the data position and RNGs only at the same world size."""
    d = run.dist
    run.model.load_state_dict(ckpt.get("train_model", ckpt["model"]))
    if run.ema:
        if "ema_updates" in ckpt:
            run.ema.load_state_dict({"updates": ckpt["ema_updates"], "weights": ckpt["model"]})
        else:  # a run that had no EMA: start the average from the weights
            run.ema.load_state_dict({"updates": 0, "weights": run.model.state_dict()})
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt["scaler"] and run.scaler.is_enabled():
        run.scaler.load_state_dict(ckpt["scaler"])
    run.step, run.epoch, run.bad_steps = ckpt["step"], ckpt["epoch"], ckpt["bad_steps"]
    run.saved_step = run.step
    run.best_ap = best_ap_on_disk(run.out)  # a resumed run only replaces best.pt with better weights
    if ckpt["world_size"] == d.world_size:
        loader.load_state_dict(ckpt["data"][d.rank])
        run.epoch_batches = ckpt["epoch_batches"]
        set_rng_state(ckpt["rng"][d.rank])
    else:
        if d.is_main:
            print(f"note: checkpoint from {ckpt['world_size']} processes, now {d.world_size}: "
                  f"epoch {run.epoch} starts over from its first batch", file=sys.stderr)
        loader.set_epoch(run.epoch)


def best_ap_on_disk(out: Path) -> float:
    """The validation AP of OUT/best.pt, -1 without one."""
    best = out / BEST
    return load_checkpoint(best).get("val", {}).get("AP", -1.0) if best.is_file() else -1.0


def read_resume_checkpoint(cfg: TrainConfig, skeleton: Skeleton, out: Path, resume: str | None):
    """The checkpoint to continue, checked against the config; None for a fresh run.

    resume: None (a fresh run; OUT/last.pt must not exist), "yes" (--resume: it must) or "auto"
    (--resume auto: continue when it exists, else start fresh; what a restart needs, since
    torchrun and schedulers rerun the same command line). A last.pt that is unreadable or from
    another model or skeleton is refused in every mode, never overwritten by a fresh run.
    """
    path = out / CHECKPOINT
    if resume is None:
        if path.exists():
            raise UserError(f"{path} exists: pass --resume (or --resume auto) to continue that run, "
                            f"or choose another --out")
        return None
    if not path.exists():
        if resume == "auto":
            return None
        raise UserError(f"--resume: no checkpoint {path} to continue")
    ckpt = load_checkpoint(path)
    for key in ("optimizer", "step", "data", "rng", "world_size"):
        if key not in ckpt:
            raise UserError(f"{path}: holds weights only (no '{key}'); it cannot be resumed")
    if ckpt["model_config"] != to_dict(cfg.model):
        raise UserError(f"{path}: was trained with another model config than the `model:` section here")
    if ckpt["skeleton"] != skeleton.to_dict():
        raise UserError(f"{path}: was trained for another skeleton than {cfg.skeleton}")
    return ckpt


def build_run(cfg: TrainConfig, d: Dist, skeleton: Skeleton, out: Path) -> Run:
    torch.manual_seed(cfg.seed)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    cuda = d.device.type == "cuda"
    model = build_model(cfg.model, skeleton.num_channels, d.device, channels_last=cfg.channels_last)
    if cfg.sync_bn and cuda and d.is_distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = model.train()
    if d.is_distributed:
        # static_graph: the same parameters are used every step, which lets DDP skip its unused-
        # parameter search and overlap the all-reduce with the backward pass; not under
        # torch.compile, whose DDP support expects static_graph=False (pytorch/pytorch#93672)
        net = DistributedDataParallel(model, device_ids=[d.local_rank] if cuda else None,
                                      gradient_as_bucket_view=True, static_graph=not cfg.compile)
    if cfg.compile:
        net.compile()  # in place: the plain module's state_dict keeps its parameter names
    amp = cfg.resolve_amp(d.device.type)
    return Run(cfg=cfg, dist=d, skeleton=skeleton, model=model, net=net,
               optimizer=build_optimizer(model, cfg.optim),
               scaler=torch.amp.GradScaler(d.device.type, enabled=amp == "fp16"),
               ema=EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None, amp=amp, out=out)


def configure_torch(cfg: TrainConfig, d: Dist):
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
        # warn_only: some CUDA backward kernels (upsampling) have no deterministic version
        torch.use_deterministic_algorithms(True, warn_only=True)
    if d.device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.set_float32_matmul_precision("high")  # TF32 where fp32 remains


def write_config(cfg: TrainConfig, run: Run):
    resolved = to_dict(replace(cfg, amp=run.amp, out=str(run.out)))
    write_text_atomic(run.out / "config.yaml", f"# resolved training config; world size {run.dist.world_size}, lr in force "
                   f"{cfg.optim.lr_per_process * run.dist.world_size:g} after warm-up\n"
                      + yaml.safe_dump(resolved, sort_keys=False))


def check_training_shards(shards, verify: bool, skeleton: Skeleton):
    """Shards made for the skeleton's keypoints, every one present with the manifest's size, and
    with --verify-shards its sha256: the manifest's shards split over this node's processes, so a
    node reads each shard once. A damaged one is a UserError naming it (the other processes are
    ended by torchrun)."""
    manifest = read_manifest_strict(shards)
    check_skeleton(manifest, shards, skeleton)
    entries = manifest.get("shards", [])
    part, parts = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    require_intact(shards, entries[part::parts] if verify else entries, hash=verify,
                 progress=verify and part == 0 and sys.stderr.isatty())


def remove_stale_temporaries(out: Path):
    """A save killed half-way (SIGKILL, a lost node) leaves its temporary file; the checkpoint it
    would have replaced is whole (model/checkpoint.py). Only rank 0 writes there, so at start any
    such file is a dead process's."""
    for tmp in list(out.glob(f".{CHECKPOINT}.*.tmp")) + list(out.glob(f".{BEST}.*.tmp")):
        tmp.unlink(missing_ok=True)


def checkpoint_note(run: Run | None, out: Path) -> str:
    if run is not None and run.saved_step is not None:
        return f"The last checkpoint, {out / CHECKPOINT} (step {run.saved_step}), is whole: restart with --resume auto"
    return f"No checkpoint was written by this run; {out / CHECKPOINT} is as it was"


def first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(e).__name__


def parse_args(argv):
    p = ArgumentParser(description="Train IMHN on shards, on one or many processes (torchrun).")
    p.add_argument("--config", required=True, help="training yaml (configs/tiny.yaml, configs/imhn512.yaml)")
    p.add_argument("--shards", help="training shards folder; default: the config's `shards`")
    p.add_argument("--out", help="output folder; default: the config's `out`")
    p.add_argument("--skeleton", help="skeleton yaml of the shards' keypoints; default: the config's `skeleton`")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps in all")
    p.add_argument("--resume", nargs="?", const="yes", metavar="auto",
                   help="continue from OUT/last.pt; `--resume auto`: continue when it exists, else start "
                        "fresh (for torchrun --max-restarts and scheduler requeues)")
    p.add_argument("--verify-shards", action="store_true",
                   help="also check each training shard's sha256 against the manifest before training "
                        "(sizes are always checked)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: GPU LOCAL_RANK when CUDA is present, else the CPU (default)")
    p.add_argument("--no-target-check", action="store_true",
                   help="skip comparing the first GPU batch (DALI GPU pipeline, CuPy targets) with the "
                        "CPU pipeline and the torch reference")
    p.add_argument("--val-shards", help="validation shards folder (COCO AP every val_every steps and at "
                                        "the end, best.pt); default: the config's `val_shards`")
    p.add_argument("--val-limit", type=int, help="validate on the first N images only (config `val_limit`)")
    args = p.parse_args(argv)
    if args.val_limit is not None and args.val_limit < 1:
        p.error(f"--val-limit must be at least 1, got {args.val_limit}")
    if args.resume not in (None, "yes", "auto"):
        p.error(f"--resume takes no value or `auto`, got {args.resume!r}")
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg = load_train_config(args.config, shards=args.shards, out=args.out, max_steps=args.max_steps,
                            val_shards=args.val_shards, val_limit=args.val_limit, skeleton=args.skeleton)
    if not cfg.shards:
        raise UserError(f"{args.config}: no training shards: pass --shards DIR or set `shards:`")
    skeleton = load_skeleton(cfg.skeleton_path())
    out = Path(cfg.out)
    ckpt = read_resume_checkpoint(cfg, skeleton, out, args.resume)  # a bad file fails before any work
    check_training_shards(cfg.shards, args.verify_shards, skeleton)  # so do foreign, missing or damaged shards
    if cfg.val_shards:  # and unusable val shards
        ShardSource(cfg.val_shards, skeleton=skeleton)
    d = init_distributed(args.device, timeout_s=60 * cfg.collective_timeout_minutes)
    stop = StopRequest()
    run = loader = None
    try:
        configure_torch(cfg, d)
        run = build_run(cfg, d, skeleton, out)
        run.validator = Validator(cfg, skeleton, d) if cfg.val_shards else None
        loader = make_loader(cfg.shards, cfg.pipeline, skeleton, device=d.device.type, rank=d.rank,
                             world_size=d.world_size, train=True)
        checked = None
        if d.device.type == "cuda" and not args.no_target_check:
            # a wrong target map or a drifting GPU pipeline would train quietly and badly: compare
            # the first batch with the CPU pipeline and the torch reference (a few seconds)
            checked = on_every_rank(d, check_gpu_path, cfg.shards, cfg.pipeline, skeleton, str(d.device),
                                    d.rank, d.world_size)
        if ckpt is not None:
            resume(run, ckpt, loader)
            del ckpt
        else:
            loader.set_epoch(0)
            if args.resume == "auto":  # a restart before the first checkpoint: best.pt is this run's
                run.best_ap = best_ap_on_disk(out)
        log = JsonlLog(out / "log.jsonl", active=d.is_main)
        if d.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_config(cfg, run)
            run.gpu_busy = gpu_busy_sampler(d.device)
            if checked:
                log.write("gpu_check", **checked)
            remove_stale_temporaries(out)
        barrier(d)
        fit(run, loader, log, stop)
    except RuntimeError as e:
        if not lost_rank(e):
            raise
        # a rank died or hung (SIGKILL, a lost node) in a collective: this one gets a broken
        # connection or the timeout; one line, and a status that makes torchrun restart the job
        raise Fault(f"rank {d.rank}: lost contact with the other ranks ({first_line(e)}); stopping. "
                    f"{checkpoint_note(run, out)}") from None
    finally:
        stop.restore()
        if run is not None and run.gpu_busy is not None:
            run.gpu_busy.close()
        if loader is not None:
            loader.close()
        shutdown(d)
    return 0


if __name__ == "__main__":
    run_cli(main)
