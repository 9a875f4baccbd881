"""This process's random number generators as a dict of tensors, and back.

Checkpoints are read with torch.load(weights_only=True), so the states of python's `random`
and numpy's legacy generator are stored as int64 tensors rather than as pickled tuples.
"""
import random

import numpy as np
import torch


def rng_state() -> dict:
    """{"torch": ByteTensor, "cuda": ByteTensor or absent, "numpy": int64 [628], "python": int64 [627]}."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        # numpy MT19937: 624 words, position, cached Gaussian flag; the cached value kept exactly as bits
        "numpy": torch.tensor([*keys.tolist(), pos, has_gauss, np.float64(gauss).view(np.int64)],
                              dtype=torch.int64),
        # python MT19937: version, 625 words, and a cached Gaussian (None -> flag 0)
        "python": torch.tensor([version, *internal, gauss_next is not None,
                                np.float64(gauss_next or 0.0).view(np.int64)], dtype=torch.int64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    n = state["numpy"].tolist()
    np.random.set_state(("MT19937", np.array(n[:624], np.uint32), n[624], n[625],
                         float(np.int64(n[626]).view(np.float64))))
    p = state["python"].tolist()
    gauss = float(np.int64(p[-1]).view(np.float64)) if p[-2] else None
    random.setstate((p[0], tuple(p[1:-2]), gauss))
