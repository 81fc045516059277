"""What a step measures, kept on the device: ``StepMeter`` moves per-step scalars to the
host in blocks without stalling the GPU; ``EpochStats`` folds an epoch's per-step values
(sums, min, max, non-finite counts) with a few kernels per step."""
from __future__ import annotations

import math
import time
from collections import deque

import torch



def stack_rows(rows: list) -> torch.Tensor:
    """Per-step rows of 0-d tensors as one (len(rows), k) tensor: one kernel for the whole
    block, none per step."""
    return torch.stack([v for row in rows for v in row]).view(len(rows), -1)


class StepMeter:
    """Per-step scalars moved to the host in blocks, without stalling the GPU.

    ``push(meta, values)`` only keeps a reference to the step's row of 0-d device tensors:
    no kernel, no copy. On a GPU, every ``block`` steps (or ``max_lag_s`` seconds) the
    waiting rows are stacked and copied by one non-blocking transfer into a reused pinned
    buffer, with one event; ``ready`` returns, in order, the records whose copy has landed
    (all of them, after one wait, with ``block=True``). On CPU a record is ready at once.

    ``lockstep`` (several ranks, which decide stops from these records): every rank must
    see the same records at the same step, so blocks go only every ``block`` steps and
    ``ready`` hands out every block but the newest, waiting for them if need be.
    """

    def __init__(self, device: torch.device, lockstep: bool = False, block: int = 32, max_lag_s: float = 0.5):
        self.cuda = device.type == "cuda"
        self.lockstep = lockstep and self.cuda
        self.block, self.max_lag_s = block, math.inf if self.lockstep else max_lag_s
        self.queued: list = []  # (meta, values) not yet sent
        self.inflight: deque = deque()  # (metas, host rows, event)
        self.free: list = []  # pinned (block, k) buffers to reuse
        self.sent_at = time.monotonic()

    def push(self, meta: dict, values: torch.Tensor) -> None:
        self.queued.append((meta, values))
        if self.cuda and (len(self.queued) >= self.block or time.monotonic() - self.sent_at > self.max_lag_s):
            self._send()

    def _send(self) -> None:
        if not self.queued:
            return
        metas, rows = zip(*self.queued)
        self.queued = []
        stacked = stack_rows(rows)
        host = self.free.pop() if self.free else None
        if host is None or host.shape[1] != stacked.shape[1]:
            host = torch.empty((self.block, stacked.shape[1]), dtype=stacked.dtype, pin_memory=True)
        host[: len(metas)].copy_(stacked, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.inflight.append((metas, host, event))
        self.sent_at = time.monotonic()

    def ready(self, block: bool = False) -> list:
        if not self.cuda:  # a few scalars per record: reading each is cheaper than stacking them
            out = [{**meta, "values": [v.item() for v in row]} for meta, row in self.queued]
            self.queued = []
            return out
        if block:
            self._send()
        out = []
        while self.inflight:
            metas, host, event = self.inflight[0]
            if not block and (len(self.inflight) == 1 if self.lockstep else not event.query()):
                break
            event.synchronize()
            self.inflight.popleft()
            out += [{**meta, "values": row} for meta, row in zip(metas, host[: len(metas)].tolist())]
            self.free.append(host)
        return out


class EpochStats:
    """Running sums, min and max of the epoch's per-step scalars, kept on the device.

    ``values`` per micro-batch are a row of 0-d tensors (loss, components..., grad_norm (NaN
    where not measured)). Micro-batches with a non-finite loss are counted in ``nonfinite``
    and kept out of the averages. ``add`` launches nothing: it keeps the row (by reference:
    do not change its tensors afterwards) and every ``FOLD`` micro-batches of the epoch
    folds the kept ones into the sums with one batch of kernels. The fold points are fixed
    positions in the epoch and the state holds the unfolded rows, so a resumed epoch adds in
    the same order (bitwise). One host read per epoch in ``summary``.
    """

    FOLD = 64

    def __init__(self, names: tuple, device: torch.device):
        self.names, self.device = names, device
        self.reset()

    def reset(self) -> None:
        k, dev = len(self.names), self.device
        self.sums = torch.zeros(k, dtype=torch.float64, device=dev)
        self.counts = torch.zeros(k, dtype=torch.float64, device=dev)
        self.low = torch.full((), math.inf, dtype=torch.float64, device=dev)
        self.high = torch.full((), -math.inf, dtype=torch.float64, device=dev)
        self.folded_nonfinite = torch.zeros((), dtype=torch.float64, device=dev)
        self.rows: list = []

    def add(self, values: torch.Tensor) -> None:
        self.rows.append(values)
        if len(self.rows) == self.FOLD:
            self._fold()

    def _fold(self) -> None:
        if not self.rows:
            return
        values = stack_rows(self.rows).double()
        self.rows = []
        loss = values[:, 0]
        good = torch.isfinite(loss)
        seen = ~torch.isnan(values) & good[:, None]  # a NaN grad_norm means "not measured"
        self.sums += torch.where(seen, values, 0.0).sum(0)
        self.counts += seen.sum(0)
        self.low = torch.minimum(self.low, torch.where(good, loss, math.inf).min())
        self.high = torch.maximum(self.high, torch.where(good, loss, -math.inf).max())
        self.folded_nonfinite += (~good).sum()

    @property
    def nonfinite(self) -> torch.Tensor:
        """Micro-batches of the epoch so far with a non-finite loss (a device scalar)."""
        if not self.rows:
            return self.folded_nonfinite
        return self.folded_nonfinite + (~torch.isfinite(torch.stack([r[0] for r in self.rows]))).sum()

    def summary(self) -> dict:
        """{loss, loss_min, loss_max, <component>..., grad_norm, nonfinite}: epoch averages
        over the finite micro-batches, and the count of non-finite ones."""
        self._fold()
        stacked = torch.cat([self.sums, self.counts, torch.stack([self.low, self.high, self.folded_nonfinite])])
        values = stacked.tolist()  # the epoch's one host read
        k = len(self.names)
        sums, counts, (low, high, nonfinite) = values[:k], values[k:2 * k], values[2 * k:]
        avg = [s / c if c else math.nan for s, c in zip(sums, counts)]
        out = {"loss": avg[0], "loss_min": low, "loss_max": high}
        out.update(zip(self.names[1:], avg[1:]))
        out["nonfinite"] = int(nonfinite)
        return out

    def state_dict(self) -> dict:
        state = {"sums": self.sums, "counts": self.counts, "low": self.low, "high": self.high,
                 "nonfinite": self.folded_nonfinite}
        state = {k: v.cpu() for k, v in state.items()}
        state["rows"] = stack_rows(self.rows).cpu() if self.rows else torch.zeros(0, len(self.names))
        return state

    def load_state_dict(self, state: dict) -> None:
        for key in ("sums", "counts", "low", "high"):
            setattr(self, key, state[key].to(self.device, torch.float64))
        self.folded_nonfinite = state["nonfinite"].to(self.device, torch.float64)
        rows = state.get("rows")
        rows = rows.to(self.device).unbind(0) if rows is not None and len(rows) else []
        self.rows = [tuple(row.unbind()) for row in rows]
