"""The one --device auto|cpu|cuda resolver (eval.py, demo.py, train_ddp.py)."""
import torch

from core.errors import UserError


def resolve_device(name: str) -> str:
    """--device auto|cpu|cuda -> "cpu" or "cuda"; asking for CUDA where there is none is a UserError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device here")
    return name
