"""Is a shard still what make_shards wrote? Its size (a stat, free) or its sha256 (reads it all),
against the manifest.

    problem = shard_problem(path, entry, hash=False)   # None, or why the shard is damaged
    require_intact(shards_dir, entries, hash=True)     # a UserError naming the first damaged one

Training checks the sizes at every start and before every epoch's pipeline reads the shards, so
a truncated or overwritten shard stops the run with its name instead of feeding garbage to the
model; `--verify-shards` adds the sha256 at start. A read error while training is traced back to
its shard the same way (pipelines/loader.py).
"""
import hashlib
from pathlib import Path

from tqdm import tqdm

from core.errors import UserError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shard_problem(path: Path, entry: dict, hash: bool = False) -> str | None:
    """Why the shard at `path` is not the one the manifest's `entry` describes; None when it is.

    entry: the manifest's record of the shard ("bytes", "sha256"). hash=False compares the size
    only; hash=True also the sha256.
    """
    try:
        size = Path(path).stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != entry["bytes"]:
        return f"{size} bytes where the manifest says {entry['bytes']}"
    if hash and sha256_file(path) != entry["sha256"]:
        return "its sha256 differs from the manifest's"
    return None


def damage_error(shards_dir, name: str, problem: str) -> UserError:
    """The one line for a damaged shard: which, why, and how to repair it."""
    return UserError(f"{Path(shards_dir) / name}: damaged since make_shards ({problem}); rerun "
                     f"tools/make_shards.py with --out {shards_dir} to rewrite it")


def require_intact(shards_dir, entries: list, hash: bool = False, progress: bool = False):
    """Raise damage_error for the first of the manifest `entries` (of folder `shards_dir`) that is
    missing, of another size, or (hash=True) of another sha256."""
    for entry in tqdm(entries, desc="verify shards", unit="shard", disable=not progress):
        problem = shard_problem(Path(shards_dir) / entry["name"], entry, hash)
        if problem:
            raise damage_error(shards_dir, entry["name"], problem)
