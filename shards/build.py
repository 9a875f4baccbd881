"""make_shards as a library function: COCO images + keypoints json -> shards in a folder.

    manifest = make_shards(images_dir, annotations, out_dir, split="train", shard_size_mb=1024,
                           workers=os.cpu_count(), keep_all=None, skeleton=load_skeleton(path))

The json's keypoint names (categories[0].keypoints) must be the skeleton's dataset keypoints, in
its order; the manifest records the skeleton's name and keypoint count, and readers
(shards.reader.check_skeleton) refuse shards made for other keypoints than theirs.

Images are processed by a process pool (decode checks, masks from pycocotools) in image-id
order and written by this process, so shards are deterministic and resumable (shards/writer.py).
"""
import os
import sys
from multiprocessing import Pool
from pathlib import Path

from tqdm import tqdm

from core.errors import UserError
from core.skeleton import load_skeleton
from shards import coco
from shards.writer import ShardWriter, check_shards, read_manifest, write_manifest, write_shard

MANIFEST_VERSION = 1


def make_shards(images_dir, annotations, out_dir, split=None, shard_size_mb=1024.0, workers=None,
                keep_all=None, progress=True, skeleton=None) -> dict:
    """Build (or finish building) the shards of one split; returns the manifest.

    split: the shard name prefix; default: the images folder's name without its year
        ("train2017" -> "train").
    keep_all: keep images without a labelled person; default: only for splits not named train*
        (the original trained only on images with people; evaluation needs every image).
    skeleton: core.skeleton.Skeleton the json's keypoints must be (default COCO's).
    """
    images_dir, annotations, out_dir = Path(images_dir).resolve(), Path(annotations).resolve(), Path(out_dir)
    if not images_dir.is_dir():
        raise UserError(f"{images_dir}: images folder not found")
    data = coco.load_annotations(annotations)  # UserError before anything is written
    skeleton = skeleton or load_skeleton()
    skeleton.check_keypoint_names(data["keypoint_names"], f"{annotations} (categories[0].keypoints)")
    split = split or images_dir.name.rstrip("0123456789") or "data"
    if keep_all is None:
        keep_all = not split.startswith("train")
    if shard_size_mb <= 0:
        raise UserError(f"--shard-size must be positive, got {shard_size_mb}")
    _make_writable(out_dir)

    arguments = {"images": str(images_dir), "annotations": str(annotations), "split": split,
                 "shard_size_mb": shard_size_mb, "keep_all": keep_all}
    K = len(data["keypoint_names"])
    todo = [(im, anns) for im, anns in data["images"] if keep_all or coco.has_labelled_person(anns)]
    dropped = len(data["images"]) - len(todo)

    old = read_manifest(out_dir)
    if old and old.get("version") == MANIFEST_VERSION and old.get("arguments") == arguments:
        intact, damaged = check_shards(out_dir, old)
        old_reports = old.get("images", {})
    else:
        intact, damaged, old_reports = [], [], {}

    manifest = {"version": MANIFEST_VERSION, "split": split, "arguments": arguments,
                "source": {"images": str(images_dir), "annotations": str(annotations)},
                "keypoint_names": data["keypoint_names"],
                "skeleton": {"name": skeleton.name, "num_keypoints": skeleton.num_dataset},
                "shards": list(intact),
                "images": dict(old_reports),  # key -> report of each processed image
                "dropped_without_people": dropped}
    done = {k for s in intact for k in s["keys"]}
    by_key = {key_of(im): (im, anns) for im, anns in todo}
    rework = [(s, [by_key[k] for k in s["keys"] if k in by_key]) for s in damaged]
    fresh = [(im, anns) for im, anns in todo
             if key_of(im) not in done and not any(key_of(im) in s["keys"] for s in damaged)]
    n_work = sum(len(x) for _, x in rework) + len(fresh)
    if intact:
        _log(f"resuming: {len(intact)} intact shard(s) kept, {len(damaged)} to rewrite, "
             f"{len(fresh)} image(s) left", progress)

    writer = ShardWriter(out_dir, split, int(shard_size_mb * 2**20), manifest,
                         on_shard=lambda _: _save(out_dir, manifest))
    bar = tqdm(total=n_work, unit="img", desc=f"shards {split}", disable=not progress)
    with _pool(workers) as pool:
        for entry, items in rework:  # same keys, same number: the lost shard again
            samples = [s for s in _process(pool, items, images_dir, K, manifest, bar) if s]
            manifest["shards"] = [s for s in manifest["shards"] if s["index_number"] != entry["index_number"]]
            if samples:
                manifest["shards"].append(write_shard(out_dir, split, entry["index_number"], samples))
                manifest["shards"].sort(key=lambda s: s["index_number"])
            _save(out_dir, manifest)
        for sample in _process(pool, fresh, images_dir, K, manifest, bar):
            if sample:
                writer.add(*sample)
        writer.flush()
    bar.close()
    _save(out_dir, manifest)
    return manifest


def key_of(image: dict) -> str:
    return f"{image['id']:012d}" if isinstance(image["id"], int) else str(image["id"])


def summarize(manifest: dict) -> dict:
    """Counts over the processed images: kept, skipped by reason, notes, annotation problems."""
    reports = manifest["images"].values()
    counts = {}
    for r in reports:
        for k, v in r.get("counts", {}).items():
            counts[k] = counts.get(k, 0) + v
    return {"shards": len(manifest["shards"]), "samples": sum(s["samples"] for s in manifest["shards"]),
            "bytes": sum(s["bytes"] for s in manifest["shards"]),
            "skipped": sum(1 for r in reports if r.get("skip")),
            "noted": sum(1 for r in reports if r.get("notes")),
            "dropped_without_people": manifest["dropped_without_people"], **counts}


# -- internals -----------------------------------------------------------------------------

def _process(pool, items, images_dir, K, manifest, bar):
    """Yield (key, components) per image in order (None when skipped); record each report."""
    jobs = ((im, anns, str(images_dir / im["file_name"]), K) for im, anns in items)
    results = pool.imap(_work, jobs, chunksize=4) if pool else map(_work, jobs)
    for key, components, report in results:
        bar.update()
        manifest["images"][key] = report
        if report.get("skip"):
            tqdm.write(f"skipped {report['file_name']}: {report['skip']}", file=sys.stderr)
        yield (key, components) if components else None


def _work(job):
    image, anns, path, K = job
    report = {"file_name": image["file_name"]}
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return key_of(image), None, {**report, "skip": f"cannot read image file ({e.strerror})"}
    components, r = coco.build_sample(image, anns, data, K)
    report.update({k: v for k, v in r.items() if v})
    return key_of(image), components, report


class _NoPool:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _pool(workers):
    workers = os.cpu_count() if workers is None else workers
    return Pool(workers) if workers > 1 else _NoPool()


def _make_writable(out_dir: Path):
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{out_dir}: output folder is not writable ({e.strerror})") from None


def _save(out_dir, manifest):
    manifest["summary"] = summarize(manifest)
    write_manifest(out_dir, manifest)


def _log(msg, progress):
    if progress:
        tqdm.write(msg, file=sys.stderr)
