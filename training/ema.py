"""Exponential moving average of a model's weights (parameters and batch-norm statistics).

The original kept an SWA copy but saved the plain weights; here the averaged copy is what a
checkpoint's `model` holds (the weights eval.py and demo.py load), and the training weights go
beside it for resuming.

    ema = EMA(model, decay=0.999)
    ...optimizer.step(); ema.update()
    ema.state_dict()["weights"]   # a model state_dict of the averaged weights
"""
import torch


class EMA:
    """shadow <- d * shadow + (1 - d) * live after every optimizer step, d = min(decay, (1 + n) / (10 + n)).

    The ramp on d (n = updates so far) keeps the first steps from averaging in the random
    initialization for thousands of steps. Integer buffers (batch-norm step counts) are copied.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        # state_dict() tensors share storage with the live parameters and buffers, which the
        # optimizer and batch norm update in place: collected once, they stay current
        live = model.state_dict()
        self.names = list(live)
        self.shadow = {k: v.detach().clone() for k, v in live.items()}
        floats = [k for k in self.names if live[k].is_floating_point()]
        self._live_f = [live[k] for k in floats]
        self._shadow_f = [self.shadow[k] for k in floats]
        self._live_i = [live[k] for k in self.names if k not in set(floats)]
        self._shadow_i = [self.shadow[k] for k in self.names if k not in set(floats)]

    @torch.no_grad()
    def update(self):
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._shadow_f, self._live_f, 1 - d)  # the kernel torch.optim.swa_utils uses
        for s, v in zip(self._shadow_i, self._live_i):
            s.copy_(v)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "weights": self.shadow}

    def load_state_dict(self, state: dict):
        self.updates = int(state["updates"])
        with torch.no_grad():
            for k in self.names:
                self.shadow[k].copy_(state["weights"][k])
