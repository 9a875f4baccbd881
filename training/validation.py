"""Validation during training: eval.py's own code on the val shards, shared among the ranks.

    validator = Validator(cfg, skeleton, dist)   # checks the shards: UserError if unusable
    stats = validator(fields)    # a checkpoint's inference fields; all ranks call, rank 0 gets stats

The frame (evaluation.inference.Preprocess.of_checkpoint: the training input size as the
image height), the flip and scales settings (val_flip, val_scales: eval.py's --flip, --scales),
the loop (evaluation.runner.run_model), the grouping and COCOeval are eval.py's, so the AP
logged here is the AP `python eval.py --weights OUT/best.pt --shards VAL` prints. Each rank runs
every world_size-th image (evaluation.sources.ShardSource); the results are gathered on rank 0,
which runs COCOeval once on all of them.

The weights evaluated are those a checkpoint's `model` holds (the EMA's when training keeps
one), loaded into a model of the validator's own, in eval mode: the training model, its
batch-norm mode and its DDP wrapper are left alone.
"""
import time

from evaluation.coco import STAT_NAMES, evaluate_keypoints
from evaluation.inference import Preprocess
from evaluation.runner import run_model
from evaluation.sources import ShardSource
from grouping import GroupingConfig
from model.imhn import build_model
from training.distributed import barrier, gather_objects


class Validator:
    def __init__(self, cfg, skeleton, dist):
        """cfg: training.config.TrainConfig with val_shards set; dist: training.distributed.Dist.

        Missing or empty val shards, or shards of another skeleton, are UserErrors here.
        """
        self.cfg, self.skeleton, self.dist = cfg, skeleton, dist
        self.source = ShardSource(cfg.val_shards, limit=cfg.val_limit or None, rank=dist.rank,
                                  world_size=dist.world_size, skeleton=skeleton)
        self.model = None          # built at the first call
        self._ground_truth = None  # rank 0: pycocotools COCO, made at the first call
        self._sent_samples = False  # every rank: its samples went to rank 0 (ground truth rebuilt)

    def __len__(self):
        """Images per validation, all ranks together."""
        return self.source.total

    def __call__(self, fields: dict) -> dict | None:
        """Evaluate a checkpoint's inference fields (train_ddp.inference_fields: the `model`
        weights, in the frame of its input_size and config). Every rank must call it. Returns, on rank 0, the ten COCO numbers plus
        images, detections, seconds and ms_per_image (wall time of the whole validation,
        COCOeval included); None on the other ranks."""
        start = time.perf_counter()
        cfg, d = self.cfg, self.dist
        if self.model is None:
            self.model = build_model(cfg.model, self.skeleton.num_channels, d.device).eval()
        self.model.load_state_dict(fields["model"])
        prep = Preprocess.of_checkpoint(fields, self.model.cfg.input_multiple)
        # no progress bar: the training bar is on the terminal
        run = run_model(self.model, self.source, self.skeleton, prep, GroupingConfig(), cfg.val_scales,
                        cfg.val_flip, d.device.type, cfg.val_batch_size, self.model.cfg.stride, progress=False)
        # the samples' keypoints, once, when rank 0 must rebuild the ground truth from them
        rebuild = not self._sent_samples and self.source.annotations is None
        parts = gather_objects(d, (run.results, run.image_ids, self.source.samples if rebuild else {}))
        self._sent_samples = True
        stats = None
        if d.is_main:
            results = [r for part in parts for r in part[0]]
            image_ids = [i for part in parts for i in part[1]]
            if self._ground_truth is None:  # read, or rebuilt from every rank's samples, once
                for part in parts:
                    self.source.samples.update(part[2])
                self._ground_truth = self.source.ground_truth()
            stats = evaluate_keypoints(self._ground_truth, results, image_ids, self.skeleton.sigmas)
            seconds = time.perf_counter() - start
            stats = {**{k: round(stats[k], 4) for k in STAT_NAMES}, "images": len(image_ids),
                     "detections": len(results), "seconds": round(seconds, 2),
                     "ms_per_image": round(1e3 * seconds / max(1, len(image_ids)), 1)}
        barrier(d)  # the ranks leave together, so no rank's wait counts as training time
        return stats
