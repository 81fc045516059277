"""Distributed helpers: plain functions that do nothing at world size 1.

A process learns its rank from the environment (``trainforge.distributed.ranks``); ``init`` joins the
process group once per process; collectives on host values (stop flags, RNG states) go
through a gloo group so they never synchronise a GPU.
"""
from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

from trainforge.distributed.ranks import env_ranks

_STATE: dict = {"store": None, "control": None}


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and torch.compile wrappers (for state_dicts)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def store(timeout_s: float = 300.0):
    """The rendezvous store of this process's ranks (created once; torchrun's agent store
    when torchrun started us)."""
    if _STATE["store"] is None:
        env_ranks()  # exports SLURM ranks as torchrun variables
        timeout = datetime.timedelta(seconds=timeout_s)
        _STATE["store"], _, _ = next(dist.rendezvous("env://", timeout=timeout))
    return _STATE["store"]


def init(backend: str, timeout_s: float) -> None:
    """Join the process group of the ranks in the environment (once per process)."""
    if is_dist():
        return
    ranks = env_ranks()
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend, store=dist.PrefixStore("trainforge_pg", store(timeout_s)),
                            rank=ranks["rank"], world_size=ranks["world_size"], timeout=timeout)
    _STATE["control"] = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
    _STATE["control"] = None


# ---- collectives (no-ops at world size 1) ----
def weighted_mean(values: tuple, weight: float) -> tuple:
    """The sample-weighted mean over ranks of a per-rank row of 0-d tensors (one all-reduce,
    no host read), as a row of 0-d tensors. A NaN on any rank makes that entry NaN on every
    rank. At world size 1: ``values`` itself (no kernel)."""
    if world_size() == 1:
        return values
    vector = torch.stack(values)
    buf = torch.cat([vector * weight, vector.new_full((1,), float(weight))])
    dist.all_reduce(buf)
    return (buf[:-1] / buf[-1]).unbind()


def summed(value):
    """``value`` (a tensor or a number) summed over ranks, in float64, as the same kind of
    value (an integer count stays an integer). At world size 1: ``value`` itself."""
    if world_size() == 1 or value is None:
        return value
    if isinstance(value, torch.Tensor):
        buf = value.detach().double().clone()
        dist.all_reduce(buf)
        return buf.to(value.dtype)
    buf = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(buf, group=_STATE["control"])
    return type(value)(buf.item()) if isinstance(value, (int, float)) else buf.item()


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (a host-side all-reduce over gloo)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, group=_STATE["control"])
    return bool(t.item() > 0)


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank ([obj] at world size 1)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj, group=_STATE["control"])
    return out


def barrier() -> None:
    if world_size() > 1:
        dist.barrier(group=_STATE["control"])


def wrap(model: torch.nn.Module, device: torch.device, sync_batchnorm: bool = False) -> torch.nn.Module:
    """DDP around ``model`` (with SyncBatchNorm if asked); the model itself at world size 1."""
    if world_size() == 1:
        return model
    if sync_batchnorm:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
