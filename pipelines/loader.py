"""Training batches straight from the shards: DALI pipeline + torch finishing + target maps.

    loader = make_loader("shards/train", cfg, skeleton, device="cuda", rank=rank, world_size=world)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:          # one epoch: len(loader) batches, the same count on every rank
            batch["images"]           # [B, 3, S, S] normalized (float32, or float16 if configured)
            batch["keypoints"]        # [B, Pmax, K', 3] float32, input pixels, v = 0 where absent
            batch["masks"]            # [B, 2, S/4, S/4] float32: loss weight (1 count, 0 ignore), person
            batch["targets"]          # [B, C, S/4, S/4] float32 (pipelines.targets.render_targets)
    state = loader.state_dict()       # {"epoch", "batches", "dali"}: resume exactly where it stopped
    loader.close()

One DALI pipeline per process for the whole run: its batches are one endless stream, and epoch e
is batches e * len(loader) ... (e + 1) * len(loader) - 1 of it. No epoch boundary costs a
pipeline start-up (a small dataset has an epoch every batch or two). The stream depends only on
(seed, rank, world size): the reader's shuffle buffer and every random draw are seeded from
them, and DALI's reader moves each rank on to the next part of the data at the end of its
part (stick_to_shard=False), so over the epochs every rank reads all of it. Resuming restores
DALI's own checkpoint of the pipeline (reader position, shuffle buffer, random generators:
`enable_checkpointing`), taken when the state was saved: exact, with nothing decoded twice.
Without one (a state from before this format) the stream is rebuilt and the batches already
taken are run and dropped: exact too, only slower.
"""
import base64
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
        self._stream = None    # the _Stream batches come from, built at the first batch
        self._restore = None   # (position, DALI checkpoint) loaded by load_state_dict
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
        """Plain data (json-able): the position, and DALI's checkpoint of the stream there."""
        state = {"epoch": self.epoch, "batches": self.taken}
        position = self._position()
        if self._stream is not None and self._stream.position == position:
            state["dali"] = self._stream.checkpoint()
        elif self._restore is not None and self._restore[0] == position:
            state["dali"] = self._restore[1]  # loaded and not yet used: still the right one
        return state

    def load_state_dict(self, state: dict):
        batches = int(state["batches"])
        if not 0 <= batches <= self._len:
            raise UserError(f"loader state: {batches} batches taken, but an epoch has {self._len}; "
                            f"were batch size, world size or shards changed?")
        self.epoch, self.taken = int(state["epoch"]), batches
        self._restore = (self._position(), state["dali"]) if "dali" in state else None
        self._drop_stream()

    def stats(self) -> dict:
        """Samples handed out so far and how many of them had more than Pmax people."""
        return {"samples": self._samples, "over_max_people": int(self._over), "max_people": self.cfg.max_people}

    # -- iteration -----------------------------------------------------------------------------
    def __iter__(self):
        if self.taken >= self._len:  # the previous epoch was finished: go on with the next one
            self.epoch, self.taken = self.epoch + 1, 0
        epoch = self.epoch
        if self.taken == 0:
            # a stat per shard and epoch: a shard truncated or rewritten since the run started
            # stops it with the shard's name before its bytes are decoded
            require_intact(self.shards_dir, self.entries)
        while self.epoch == epoch and self.taken < self._len:
            raw = self._stream_at(self._position()).next()
            self.taken += 1  # counted before the yield: a consumer that stops here has taken it
            yield self._finish(raw)

    def _position(self) -> int:
        """Batches of the stream before the next one to hand out."""
        return self.epoch * self._len + self.taken

    def _stream_at(self, position: int) -> "_Stream":
        """The stream, about to give batch `position`: continued, restored or replayed to it."""
        stream = self._stream
        if stream is None or stream.position > position:
            self._drop_stream()
            restore, self._restore = self._restore, None
            if restore is not None and restore[0] <= position:
                stream = _Stream(self, *restore)
            else:
                stream = _Stream(self)
            self._stream = stream
        stream.skip_to(position)  # a jump ahead (set_epoch, a state without DALI's checkpoint)
        return stream

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
        """Free the DALI pipeline (threads, buffers); the loader can still iterate later."""
        self._drop_stream()

    def _drop_stream(self):
        self._stream = None  # DALI frees threads and buffers with the last reference

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class _Stream:
    """The DALI pipeline and iterator of one process, and how many batches it gave (position).

    Built from (seed, rank, world size) alone, or restored from a DALI checkpoint taken at
    `position` (the pipeline restores the reader's position, its shuffle buffer and the random
    generators' states).
    """

    def __init__(self, loader, position: int = 0, checkpoint: str | None = None):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator
        from pipelines.pipeline import OUTPUTS, augment_pipeline

        self._loader, self.position = loader, position
        cfg = loader.cfg
        seeds = np.random.SeedSequence([cfg.seed, loader.rank, loader.world_size]).generate_state(2)
        gpu = loader.device.type == "cuda"
        self.pipe = augment_pipeline(
            loader.paths, loader.index_paths, cfg, loader.skeleton.num_dataset, "gpu" if gpu else "cpu",
            loader.rank, loader.world_size, loader.train, int(seeds[0] & 0x7FFFFFFF),
            batch_size=cfg.batch_size, num_threads=cfg.num_threads,
            device_id=loader.device.index if gpu else None, seed=int(seeds[1] & 0x7FFFFFFF),
            prefetch_queue_depth=cfg.prefetch, enable_checkpointing=True,
            checkpoint=None if checkpoint is None else base64.b64decode(checkpoint))
        with self._read_errors_named():
            self.pipe.build()
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

    def checkpoint(self) -> str:
        """DALI's checkpoint of the pipeline as it stands after `position` batches (it accounts
        for the batches it has prepared ahead), as text for the training checkpoint."""
        return base64.b64encode(self.iterator.checkpoints()[0]).decode("ascii")

    def skip_to(self, position: int):
        while self.position < position:
            self.next()

    def next(self) -> dict:
        self.position += 1
        with self._read_errors_named():
            return next(self.iterator)[0]


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
