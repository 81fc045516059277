"""Every random number generator's state as tensors and primitives (weights_only-safe)."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


class RNGState:
    """Stateful view of the process's RNGs: python, numpy, torch CPU and every CUDA device.

    With several ranks a checkpoint holds ``{"ranks": [state of rank 0, rank 1, ...]}``
    (``gathered``) and each rank restores its own."""

    @classmethod
    def gathered(cls):
        """Every rank's state (a collective: all ranks call it); the plain view at world size 1."""
        from trainforge.distributed import group as dist

        if dist.world_size() == 1:
            return cls()
        states = dist.gather_objects(cls().state_dict())
        return _Fixed({"ranks": states})

    def state_dict(self) -> dict:
        version, internal, gauss = random.getstate()
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": {"version": version, "state": list(internal), "gauss": gauss},
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        if "ranks" in state:  # a multi-rank checkpoint: this rank's own (forced resume at another size: wrap)
            from trainforge.distributed import group as dist

            state = state["ranks"][dist.rank() % len(state["ranks"])]
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
        npy = state["numpy"]
        np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                             npy["has_gauss"], npy["cached"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            cuda = state["cuda"][: torch.cuda.device_count()]
            torch.cuda.set_rng_state_all(cuda)


class _Fixed:
    """A state gathered earlier, offered with the ``state_dict`` interface."""

    def __init__(self, state: dict):
        self.state = state

    def state_dict(self) -> dict:
        return self.state
