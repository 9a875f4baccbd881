"""Training batches straight from the shards: DALI pipeline + torch finishing + target maps.

    loader = make_loader("shards/train", cfg, skeleton, device="cuda", rank=rank, world_size=world)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:          # one epoch: len(loader) batches, the same count on every rank
            batch["images"]           # [B, 3, S, S] normalized (float32, or float16 if configured)
            batch["keypoints"]        # [B, Pmax, K', 3] float32, input pixels, v = 0 where absent
            batch["masks"]            # [B, 2, S/4, S/4] float32: loss weight (1 count, 0 ignore), person
            batch["targets"]          # [B, C, S/4, S/4] float32 (pipelines.targets.render_targets)
    state = loader.state_dict()       # {"epoch", "batches"}: resume exactly where training stopped
    loader.close()

Determinism: epoch e of rank r is a pipeline built afresh with a seed drawn from (seed, e, r), a
shard order drawn from (seed, e) and this rank's part rotated by e, so the batches depend only
on (seed, epoch, rank) and never on how the process got there. Resuming at batch t re-creates
the epoch's pipeline and runs (and drops) its first t batches: exact, at the cost of decoding
them once more. While the last batch of an epoch is being used, the next epoch's pipeline is
built and starts working in the background, so an epoch boundary costs no pipeline start-up.
"""
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError
from pipelines.batch import finish_keypoints, flag_masks
from pipelines.targets import render_targets
from shards.integrity import require_intact
from shards.reader import check_skeleton, read_manifest_strict


def make_loader(shards_dir, cfg, skeleton, device="cpu", rank=0, world_size=1, train=True):
    """Build the Loader of one process (see the module docstring).

    Args:
        shards_dir: folder made by tools/make_shards.py (tar shards, .idx files, manifest.json).
        cfg: pipelines.config.PipelineConfig.
        skeleton: core.skeleton.Skeleton of the data.
        device: "cpu" (DALI CPU operators, no CUDA needed) or "cuda" (mixed decode, GPU warps,
            the CuPy target kernel; the current CUDA device, or "cuda:N").
        rank, world_size: this process's part of the data (DALI shard_id / num_shards).
        train: augment and shuffle; False: the left S x S window of the inference frame
            (core/frame.py), no augmentation, in shard order.
    """
    return Loader(shards_dir, cfg, skeleton, device, rank, world_size, train)


class Loader:
    """Iterable over one epoch of batches; see the module docstring."""

    def __init__(self, shards_dir, cfg, skeleton, device="cpu", rank=0, world_size=1, train=True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.cfg, self.skeleton, self.train = cfg, skeleton, train
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {device!r}")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.shards_dir = Path(shards_dir)
        self.entries, self.num_samples = _shard_entries(self.shards_dir, skeleton)
        self.paths = [str(self.shards_dir / e["name"]) for e in self.entries]
        self.index_paths = [str(self.shards_dir / e["index"]) for e in self.entries]
        self._len = self.num_samples // world_size // cfg.batch_size
        if self._len == 0:
            raise UserError(f"{shards_dir}: {self.num_samples} samples make no full batch of "
                            f"{cfg.batch_size} on each of {world_size} process(es)")
        self.epoch, self.taken = 0, 0
        self._live = None      # the _EpochPipeline batches come from
        self._ahead = None     # the next epoch's, being started in the background
        self._samples = 0      # samples handed out
        self._over = torch.zeros((), dtype=torch.int64, device=self.device)  # ... with > Pmax people

    # -- position ------------------------------------------------------------------------------
    def __len__(self):
        return self._len

    def set_epoch(self, epoch: int):
        """Select the epoch the next iteration yields. The same epoch again keeps an unfinished
        position (a resumed run) and restarts a finished one."""
        if epoch != self.epoch or self.taken >= self._len:
            self.epoch, self.taken = int(epoch), 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.taken}

    def load_state_dict(self, state: dict):
        batches = int(state["batches"])
        if not 0 <= batches <= self._len:
            raise UserError(f"loader state: {batches} batches taken, but an epoch has {self._len}; "
                            f"were batch size, world size or shards changed?")
        self.epoch, self.taken = int(state["epoch"]), batches

    def stats(self) -> dict:
        """Samples handed out so far and how many of them had more than Pmax people."""
        return {"samples": self._samples, "over_max_people": int(self._over), "max_people": self.cfg.max_people}

    # -- iteration -----------------------------------------------------------------------------
    def __iter__(self):
        if self.taken >= self._len:  # the previous epoch was finished: go on with the next one
            self.epoch, self.taken = self.epoch + 1, 0
        epoch = self.epoch
        while self.epoch == epoch and self.taken < self._len:
            raw = self._next_raw(epoch, self.taken)
            self.taken += 1  # counted before the yield: a consumer that stops here has taken it
            yield self._finish(raw)

    def _next_raw(self, epoch: int, position: int) -> dict:
        """The DALI outputs of batch `position` of `epoch`, from the live pipeline when it is there."""
        live = self._live
        if live is None or live.epoch != epoch or live.position != position:
            ahead, self._ahead = self._ahead, None
            live = ahead.join() if ahead is not None and ahead.epoch == epoch else None
            if ahead is not None and live is None:
                ahead.close()
            self._drop_live()
            self._live = live = live or _EpochPipeline(self, epoch)
            live.skip_to(position)  # resume: run and drop the batches already taken
        raw = live.next()
        if live.position == self._len and self._ahead is None:
            # the epoch's last batch: on a thread, retire this pipeline (it finishes the batches it
            # ran ahead) and start the next epoch's while the consumer works on this batch
            self._live = None
            self._ahead = _EpochPipeline(self, epoch + 1, background=True, retire=live)
        return raw

    def _finish(self, raw: dict) -> dict:
        """DALI outputs -> the batch dict of the contract, on the loader's device."""
        dev = self.device
        keypoints, over = finish_keypoints(raw["keypoints"].to(dev), raw["flips"].to(dev), self.skeleton,
                                           self.cfg.input_size, self.cfg.max_people)
        masks = flag_masks(raw["masks"].to(dev))
        targets = render_targets(keypoints, masks, self.skeleton, self.cfg.targets)
        self._samples += keypoints.shape[0]
        self._over += over.sum()
        return {"images": raw["images"].to(dev), "keypoints": keypoints, "masks": masks, "targets": targets}

    # -- cleanup -------------------------------------------------------------------------------
    def close(self):
        """Free the DALI pipelines (threads, buffers); the loader can still iterate later."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.close()
        self._drop_live()

    def _drop_live(self):
        live, self._live = self._live, None
        if live is not None:
            live.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class _EpochPipeline:
    """The DALI pipeline and iterator of one epoch of one rank, and how many batches it gave.

    Built from (seed, epoch, rank) alone. With background=True it is built, and its first batch
    computed, on a thread (after closing `retire`, the previous epoch's); `join` waits for it
    and raises what the thread raised. DALI's outputs outlive their pipeline.
    """

    def __init__(self, loader, epoch: int, background: bool = False, retire=None):
        self.epoch, self.position = epoch, 0
        self.pipe = self.iterator = self._error = None
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._build_guarded, args=(loader, retire), daemon=True)
            self._thread.start()
        else:
            self._build(loader)

    def _build_guarded(self, loader, retire):
        try:
            if loader.device.type == "cuda":
                # the current device is per thread and a new one starts on GPU 0: without this the
                # first batch's DLPack hand-over (legacy default stream) would sync with GPU 0's
                # stream on every other rank, and open a context there
                torch.cuda.set_device(loader.device)
            if retire is not None:
                retire.close()
            self._build(loader)
        except BaseException as e:  # handed to the consumer in join()
            self._error = e

    def _build(self, loader):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator
        from pipelines.pipeline import OUTPUTS, augment_pipeline

        # a stat per shard and epoch: a shard truncated or rewritten since the run started stops
        # it with the shard's name before its bytes are decoded
        require_intact(loader.shards_dir, loader.entries)
        self._loader = loader
        cfg, epoch = loader.cfg, self.epoch
        order = np.arange(len(loader.paths))
        shard_id = loader.rank
        if loader.train:  # a new shard order and a different part of it for this rank every epoch
            order = np.random.default_rng([cfg.seed, epoch]).permutation(len(loader.paths))
            shard_id = (loader.rank + epoch) % loader.world_size
        seeds = np.random.SeedSequence([cfg.seed, epoch, loader.rank]).generate_state(2)
        gpu = loader.device.type == "cuda"
        self.pipe = augment_pipeline(
            [loader.paths[i] for i in order], [loader.index_paths[i] for i in order], cfg,
            loader.skeleton.num_dataset, "gpu" if gpu else "cpu", shard_id, loader.world_size, loader.train,
            int(seeds[0] & 0x7FFFFFFF),
            batch_size=cfg.batch_size, num_threads=cfg.num_threads,
            device_id=loader.device.index if gpu else None, seed=int(seeds[1] & 0x7FFFFFFF),
            prefetch_queue_depth=cfg.prefetch)
        with self._read_errors_named():
            self.pipe.build()
            # computes the first batch (prepare_first_batch): on the thread when in the background
            self.iterator = DALIGenericIterator([self.pipe], list(OUTPUTS), size=-1, auto_reset=False)

    @contextmanager
    def _read_errors_named(self):
        """A DALI failure (a malformed tar, an undecodable image) becomes the UserError naming the
        damaged shard when the shards no longer match the manifest (sha256 included); else it is
        raised as it is, a bug or a fault of ours."""
        try:
            yield
        except RuntimeError:
            require_intact(self._loader.shards_dir, self._loader.entries, hash=True)
            raise

    def join(self):
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error
        return self

    def skip_to(self, position: int):
        while self.position < position:
            self.next()

    def next(self) -> dict:
        self.position += 1
        with self._read_errors_named():
            return next(self.iterator)[0]

    def close(self):
        try:
            self.join()
        except Exception:
            pass  # a pipeline nobody will use: its failure does not matter
        self.iterator = self.pipe = None  # DALI frees threads and buffers with the last reference


def _shard_entries(shards_dir: Path, skeleton):
    """(the manifest's entries of the shards holding samples, total samples) of a shards folder,
    checked against the skeleton; every listed shard and index file there, of the listed size."""
    if not shards_dir.is_dir():
        raise UserError(f"{shards_dir}: shards folder not found")
    manifest = read_manifest_strict(shards_dir)
    check_skeleton(manifest, shards_dir, skeleton)
    entries = []
    for entry in manifest.get("shards", []):
        entry = {"index": Path(entry["name"]).stem + ".idx", **entry}
        if not (shards_dir / entry["index"]).is_file():
            raise UserError(f"{shards_dir}: {entry['index']} is listed in the manifest but missing; "
                            f"rerun tools/make_shards.py to repair the folder")
        if entry["samples"]:
            entries.append(entry)
    require_intact(shards_dir, entries)
    return entries, sum(e["samples"] for e in entries)
