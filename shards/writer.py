"""Write samples into size-bounded tar shards with DALI index files and a manifest; resumable.

Layout of an output folder:
    {split}-{n:06d}.tar   samples in image-id order, each under the size bound
    {split}-{n:06d}.idx   DALI's webdataset index of that tar (made by DALI's own wds2idx)
    manifest.json         shards (keys, sample count, bytes, sha256), skipped images with reasons,
                          notes, counts, source paths and the arguments

Crash safety: a shard is written as `.tar.tmp`, indexed, then renamed; the manifest is rewritten
(temp + rename) after every finished shard. A rerun with the same arguments keeps every listed
shard whose sha256 still matches, rewrites listed shards that are missing or damaged from their
recorded keys, and packs the images no shard holds into new shards. Tars are byte-reproducible
(fixed mtime, owner and mode), so a rewritten shard is identical to the lost one.
"""
import json
import os
import tarfile
from pathlib import Path

import webdataset as wds
from wds2idx import IndexCreator

from core.files import write_text_atomic
from shards.integrity import sha256_file, shard_problem

MANIFEST = "manifest.json"
_BLOCK, _RECORD = 512, tarfile.RECORDSIZE  # tar block and the record size archives are padded to


def tar_bytes(member_sizes) -> int:
    """Exact size of a tar archive holding members of these sizes (as tarfile writes it).

    Each member: a 512-byte header plus data padded to 512; then two zero blocks; the whole
    archive padded to tarfile's record size (10240 bytes).
    """
    body = sum(_BLOCK + -(-s // _BLOCK) * _BLOCK for s in member_sizes) + 2 * _BLOCK
    return -(-body // _RECORD) * _RECORD


class ShardWriter:
    """Packs (key, components) samples in order into `{split}-{n:06d}.tar` under `max_bytes`."""

    def __init__(self, out_dir: Path, split: str, max_bytes: int, manifest: dict, on_shard=None):
        self.out_dir, self.split, self.max_bytes = Path(out_dir), split, max_bytes
        self.manifest = manifest
        self.on_shard = on_shard
        self.pending = []  # [(key, components)] of the shard being filled
        self.sizes = []    # their member sizes, bytes
        taken = [s["index_number"] for s in manifest["shards"]]
        self.next_number = max(taken) + 1 if taken else 0

    def add(self, key: str, components: dict):
        sizes = [len(v) for v in components.values()]
        if self.pending and tar_bytes(self.sizes + sizes) > self.max_bytes:
            self.flush()
        self.pending.append((key, components))
        self.sizes += sizes

    def flush(self):
        if not self.pending:
            return
        number = self.next_number
        self.next_number += 1
        entry = write_shard(self.out_dir, self.split, number, self.pending)
        self.pending, self.sizes = [], []
        self.manifest["shards"].append(entry)
        self.manifest["shards"].sort(key=lambda s: s["index_number"])
        if self.on_shard:
            self.on_shard(entry)


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def write_shard(out_dir: Path, split: str, number: int, samples) -> dict:
    """Write one shard and its index atomically; returns its manifest entry."""
    name = shard_name(split, number)
    final, tmp = out_dir / name, out_dir / (name + ".tmp")
    idx_final = final.with_suffix(".idx")
    idx_tmp = out_dir / (idx_final.name + ".tmp")
    with open(tmp, "wb") as f:
        # fixed mtime/owner/mode: the same samples always give the same bytes (resume, sha256)
        with wds.TarWriter(f, encoder=False, mtime=0, user="simplepose", group="simplepose", mode=0o444) as tw:
            for key, comps in samples:
                tw.write({"__key__": key, **comps})
        f.flush()
        os.fsync(f.fileno())
    with IndexCreator(str(tmp), str(idx_tmp), verbose=False) as ic:
        ic.create_index()
    os.replace(idx_tmp, idx_final)
    os.replace(tmp, final)
    return {"name": name, "index": idx_final.name, "index_number": number, "samples": len(samples),
            "bytes": final.stat().st_size, "sha256": sha256_file(final), "keys": [k for k, _ in samples]}


def read_manifest(out_dir: Path):
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None  # a damaged manifest: start over, as if there were none


def write_manifest(out_dir: Path, manifest: dict):
    write_text_atomic(Path(out_dir) / MANIFEST, json.dumps(manifest, indent=1))


def check_shards(out_dir: Path, manifest: dict):
    """Split the manifest's shards into (intact, damaged): damaged = missing, or sha256 differs."""
    intact, damaged = [], []
    for entry in manifest.get("shards", []):
        path = Path(out_dir) / entry["name"]
        ok = shard_problem(path, entry, hash=True) is None
        if ok and not (Path(out_dir) / entry["index"]).is_file():
            with IndexCreator(str(path), str(Path(out_dir) / entry["index"]), verbose=False) as ic:
                ic.create_index()
        (intact if ok else damaged).append(entry)
    return intact, damaged
