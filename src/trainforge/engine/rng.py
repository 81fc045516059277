"""Every random number generator's state as tensors and primitives (weights_only-safe)."""
from __future__ import annotations

import logging
import random

import numpy as np
import torch

log = logging.getLogger("trainforge")  # engine.logging.LOGGER


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

    def load_state_dict(self, state: dict, resumed: bool = False) -> None:
        """This rank's own state. A checkpoint (``resumed``) from fewer ranks has none for the
        new ones: they take a stream derived from (a saved rank's state, their rank), said in
        the log. (A state saved in this run, as the dry batch's, is restored as it was.)"""
        from trainforge.distributed import group as dist

        ranks, rank = state.get("ranks", [state]), dist.rank()
        state = ranks[rank % len(ranks)]
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
        npy = state["numpy"]
        np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                             npy["has_gauss"], npy["cached"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            cuda = state["cuda"][: torch.cuda.device_count()]
            torch.cuda.set_rng_state_all(cuda)
        if resumed and rank >= len(ranks):
            _derive(state, rank)
        if resumed and rank == 0 and dist.world_size() > len(ranks):  # rank 0 writes the log
            log.info(
                "The checkpoint holds the random state of %d rank(s): ranks %d-%d take streams derived from it "
                "(rank r from rank r mod %d's state and r)", len(ranks), len(ranks), dist.world_size() - 1, len(ranks))


def _derive(state: dict, rank: int) -> None:
    """Seed this rank's generators from a hash of the state it took and its rank: a stream
    of its own, the same on every resume of the same checkpoint."""
    import hashlib

    digest = hashlib.sha256(state["torch"].numpy().tobytes() + rank.to_bytes(4, "little")).digest()
    seed = int.from_bytes(digest[:8], "little") % 2 ** 63
    seed_everything(seed)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


class _Fixed:
    """A state gathered earlier, offered with the ``state_dict`` interface."""

    def __init__(self, state: dict):
        self.state = state

    def state_dict(self) -> dict:
        return self.state
