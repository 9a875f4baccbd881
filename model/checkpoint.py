"""Checkpoints: plain dicts written atomically, read back with torch.load(weights_only=True).

A checkpoint holds at least
    model          state_dict of the weights to use for inference (the averaged ones when
                   training keeps an EMA/SWA copy)
    model_config   dict of model.config.ModelConfig (core.config.to_dict)
    skeleton       core.skeleton.Skeleton.to_dict()
    input_size     int, the side S of the training input
plus whatever training adds (optimizer, scaler, scheduler, step, rng, data position, config...).
Only plain types go in (tensors, dicts, lists, numbers, strings; RNG states as tensors), since
the file is read with weights_only=True and never unpickles arbitrary objects.

    save_checkpoint({"model": model.state_dict(), "model_config": to_dict(cfg),
                     "skeleton": skeleton.to_dict(), "input_size": 512}, "runs/x/last.pt")
    model, skeleton, ckpt = load_model("runs/x/last.pt", device="cuda", skeleton=skeleton)
"""
import os
import pickle
import zipfile
from pathlib import Path

import torch

from core.config import from_dict
from core.errors import UserError
from core.skeleton import skeleton_from_dict
from model.config import ModelConfig
from model.imhn import IMHN

REQUIRED_KEYS = ("model", "model_config", "skeleton", "input_size")


def save_checkpoint(obj: dict, path) -> Path:
    """torch.save `obj` to `path` via a temporary file in the same folder: fsync, then rename.

    A crash at any point leaves either the previous file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of our own in the same folder (same filesystem, so the rename is atomic); opened
    # with open() rather than mkstemp so the file gets the usual umask permissions, not 0600
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # makes the rename itself durable
    return path


def _fsync_dir(folder: Path):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems / platforms do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path) -> dict:
    """Read a checkpoint (on the CPU); a missing, corrupt or foreign file is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path}: not a readable checkpoint (it holds objects other than tensors and "
                        f"plain values, which torch.load(weights_only=True) refuses)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        first = str(e).strip().split(". ")[0].splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a readable checkpoint (truncated or corrupt: {first[:150]})") from None
    except (ValueError, AttributeError, ImportError, IndexError, KeyError, TypeError, UnicodeDecodeError):
        raise UserError(f"{path}: not a readable checkpoint (not a file written by torch.save)") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: not a SimplePose checkpoint (holds a {type(ckpt).__name__}, not a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"{path}: not a SimplePose checkpoint (missing {', '.join(missing)})")
    return ckpt


def load_model(path, device="cpu", skeleton=None):
    """Rebuild IMHN from a checkpoint, in eval mode on `device`.

    Returns (model, skeleton, ckpt). With `skeleton` given, a checkpoint trained for another
    skeleton is a UserError.
    """
    ckpt = load_checkpoint(path)
    cfg = from_dict(ModelConfig, ckpt["model_config"], f"{path}: model_config")
    saved = skeleton_from_dict(ckpt["skeleton"], f"{path}: skeleton")
    if skeleton is not None and skeleton.to_dict() != saved.to_dict():
        raise UserError(f"checkpoint {path} was trained for skeleton {_describe(saved)}, "
                        f"not {_describe(skeleton)}")
    model = IMHN(cfg, saved.num_channels)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: its weights do not fit its model_config "
                        f"({str(e).strip().splitlines()[0][:200]})") from None
    return model.to(device).eval(), saved, ckpt


def _describe(skeleton) -> str:
    return f"'{skeleton.name}' ({skeleton.num_keypoints} keypoints, {skeleton.num_limbs} limbs)"
