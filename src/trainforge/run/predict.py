"""After training: a run's model on new inputs, every sample's output written in input order.

    trainforge predict RUN [ckpt=best] [split=val|test|train | input=FILE] [out=PATH] [weights=raw|ema] [KEY=VALUE ...]
    trainforge.predict(RUN, split="val")   # the same from Python: returns the output file

The model and the data option come from the run's own ``config.yaml`` (as ``trainforge
eval``, whose checkpoint names, weights and allowed overrides it shares). ``input=FILE`` is
a file in the data option's own format (HDF5 for glint, digits and the sequence sets).
Per-sample outputs (a class or a score per sample) go to a CSV: ``index`` (the sample's
position in the input), the raw output, and for classification the probabilities and the
predicted label. Dense outputs (segmentation maps) go to an HDF5 file with the same fields
as arrays. Rows are written batch by batch, so memory stays bounded. With
``trainer.devices=N`` (or under torchrun) each rank predicts its contiguous part of the
input and rank 0 appends the parts in order: every sample once, the same file as one process.
"""
from __future__ import annotations

import csv
import datetime
from pathlib import Path

import torch

from trainforge.errors import ConfigError
from trainforge.files import PRED_DIR


def probabilities(logits: torch.Tensor) -> tuple:
    """(probabilities, labels): sigmoid and > 0.5 for one channel, softmax and argmax over
    dimension 1 for several."""
    if logits.ndim == 1 or logits.shape[1] == 1:
        prob = torch.sigmoid(logits)
        return prob, (prob > 0.5).long()
    prob = torch.softmax(logits, dim=1)
    return prob, prob.argmax(dim=1)


class CsvWriter:
    """``index, output[_c]..., probability[_c]..., label`` per sample."""

    def __init__(self, path: Path, width: int):
        self.path, self.count = path, 0
        self.file = open(path, "w", newline="")
        self.writer = csv.writer(self.file)
        cols = ["output"] if width == 1 else [f"output_{c}" for c in range(width)]
        self.writer.writerow(["index", *cols, *[c.replace("output", "probability") for c in cols], "label"])

    def add(self, index: torch.Tensor, logits: torch.Tensor) -> None:
        prob, label = probabilities(logits)
        flat = lambda t: t.reshape(len(t), -1).tolist()  # noqa: E731
        for i, out, p, lab in zip(index.tolist(), flat(logits), flat(prob), label.reshape(len(label), -1).tolist()):
            self.writer.writerow([i, *out, *p, lab[0]])
        self.count += len(index)

    def extend(self, path: Path) -> int:
        """Append another rank's part (its rows after the header); it is removed. Its row count."""
        rows = 0
        with open(path, newline="") as part:
            next(part)
            for line in part:
                self.file.write(line)
                rows += 1
        path.unlink()
        return rows

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()


class H5Writer:
    """Arrays ``index`` (N,), ``output``, ``probability``, ``label`` (N, ...), grown per batch."""

    def __init__(self, path: Path, sample_shape: tuple):
        import h5py

        self.path, self.count = path, 0
        self.file = h5py.File(path, "w")
        self.sets = {"index": self.file.create_dataset("index", (0,), "int64", maxshape=(None,))}
        for name, dtype in (("output", "float32"), ("probability", "float32"), ("label", "int64")):
            shape = sample_shape if name != "label" or sample_shape[0] == 1 else sample_shape[1:]
            self.sets[name] = self.file.create_dataset(name, (0, *shape), dtype, maxshape=(None, *shape),
                                                       chunks=(1, *shape))

    def add(self, index: torch.Tensor, logits: torch.Tensor) -> None:
        prob, label = probabilities(logits)
        for name, values in (("index", index), ("output", logits), ("probability", prob), ("label", label)):
            data = self.sets[name]
            start = data.shape[0]
            data.resize(start + len(values), axis=0)
            data[start:] = values.numpy()
        self.count += len(index)

    def extend(self, path: Path, chunk: int = 256) -> int:
        """Append another rank's part, ``chunk`` samples at a time; it is removed. Its sample count."""
        import h5py

        with h5py.File(path, "r") as part:
            n = part["index"].shape[0]
            for i in range(0, n, chunk):
                for name, data in self.sets.items():
                    values = part[name][i:i + chunk]
                    data.resize(data.shape[0] + len(values), axis=0)
                    data[-len(values):] = values
        path.unlink()
        return n

    def close(self) -> None:
        if self.file:
            self.file.close()


def predict(source, ckpt: str = "best", split=None, input=None, out=None, weights=None, overrides=(),
            echo=print) -> Path:
    """Write the model's output on ``split`` (default val) or ``input`` (a file in the data
    option's format) to ``out`` (default ``RUN/predictions/<time>_<what>.csv|.h5``). On N
    ranks (``trainer.devices=N``, torchrun) each writes its contiguous part beside ``out``
    and rank 0 appends them in rank order; ``out`` appears, complete, at the end."""
    from trainforge.distributed import group as dist
    from trainforge.engine.checkpoint import load_checkpoint
    from trainforge.run.evaluate import Evaluation, checkpoint_file, on_how_many, on_ranks, pick_weights, run_config

    if split is not None and input is not None:
        raise ConfigError("predict: give split=NAME or input=FILE, not both")
    run_dir = Path(source).expanduser()
    cfg = run_config(run_dir, overrides)
    path = checkpoint_file(run_dir, ckpt)
    spawned, written = on_ranks(cfg, "trainforge.run.predict:predict", dict(
        source=str(run_dir), ckpt=ckpt, split=split, input=input and str(input), out=out and str(out),
        weights=weights, overrides=list(overrides)))
    if spawned:  # rank 0 printed the line
        return Path(written)
    state, which = pick_weights(load_checkpoint(path), ckpt, weights, path)
    parts = Evaluation(cfg, split or "val", state, input=input)
    what = split or "val" if input is None else Path(input).stem
    stamp = dist.gather_objects(datetime.datetime.now().strftime("%Y%m%d-%H%M%S_%f"))[0]  # rank 0's, on every rank
    target = Path(out).expanduser() if out is not None else run_dir / PRED_DIR / f"{stamp}_{what}"
    mine = dist.is_main() or parts.metrics.sharded  # unsharded, rank 0 alone writes
    writer = write_part(parts, target, out is None) if mine else None
    try:
        dist.barrier()  # every part written
        if dist.is_main():
            done = writer.count + sum(writer.extend(part_of(writer.out, r)) for r in range(1, dist.world_size())
                                      if parts.metrics.sharded)
            writer.close()
            writer.path.replace(writer.out)
            echo(f"Predicted {done} samples of {what} with {run_dir} (ckpt={ckpt}, {which} weights"
                 f"{on_how_many(dist.world_size())}): wrote {writer.out}")
    except BaseException:
        if writer is not None:
            writer.close()
            for r in range(dist.world_size()) if dist.is_main() else [dist.rank()]:  # rank 0: every part
                part_of(writer.out, r).unlink(missing_ok=True)
        raise
    return writer.out if writer is not None else None


def part_of(out: Path, rank: int) -> Path:
    """Where rank ``rank`` writes its part of ``out`` (rank 0's becomes ``out``)."""
    return out.with_name(f".{out.name}.part{rank}")


def write_part(parts, target: Path, suffixed: bool):
    """This rank's samples through the model into its part file, batch by batch; the writer
    (still open, ``.count`` rows) is returned."""
    from trainforge.distributed import group as dist
    from trainforge.engine.trainer import call, to_device

    sampler = parts.loader.sampler
    start = sampler.start if isinstance(sampler, range) else 0  # this rank's first sample
    writer = None
    try:
        with torch.no_grad():
            for batch in parts.loader:
                inputs = to_device(batch, parts.device)[0]
                with parts.precision.autocast():
                    output = call(parts.model, inputs, parts.call_style)
                logits = output.get("logits") if isinstance(output, dict) else output
                if not isinstance(logits, torch.Tensor):
                    raise ConfigError(f"predict: the model gives {type(output).__name__}; a tensor (or a dict with "
                                      "'logits') is needed")
                logits = logits.detach().float().cpu()
                if writer is None:
                    writer = open_writer(target, suffixed, logits, dist.rank())
                writer.add(torch.arange(start + writer.count, start + writer.count + len(logits)), logits)
    except BaseException:
        if writer is not None:
            writer.close()
            writer.path.unlink(missing_ok=True)
        raise
    if writer is None:
        raise ConfigError(f"predict: {target.name}: the input has no samples")
    if not dist.is_main():
        writer.close()
    return writer


def open_writer(target: Path, suffixed: bool, logits: torch.Tensor, rank: int):
    """The writer of this rank's part of ``target`` (with the suffix the outputs call for
    when ``suffixed``, else the suffix checked); ``.out`` is the final file."""
    dense = logits.ndim > 2
    out = target.with_name(f"{target.name}.{'h5' if dense else 'csv'}") if suffixed else target
    wanted = (".h5", ".hdf5") if dense else (".csv",)
    if out.suffix not in wanted:
        kind = f"dense ({tuple(logits.shape[1:])} a sample)" if dense else "one row a sample"
        raise ConfigError(f"out={out}: the outputs are {kind}: give a {' or '.join(wanted)} file")
    if out.exists():
        raise ConfigError(f"out={out}: exists already (nothing is overwritten)")
    out.parent.mkdir(parents=True, exist_ok=True)
    path = part_of(out, rank)
    width = 1 if logits.ndim == 1 else logits.shape[1]
    writer = H5Writer(path, tuple(logits.shape[1:])) if dense else CsvWriter(path, width)
    writer.out = out
    return writer


def main(argv) -> int:
    """``trainforge predict RUN [ckpt=..] [split=..|input=..] [out=..] [weights=..] [KEY=VALUE ...]``."""
    from trainforge.run.evaluate import command

    return command(argv, __doc__.split("\n\n")[1], ("ckpt", "split", "input", "out", "weights"),
                   lambda run, k, overrides: predict(run, k["ckpt"] or "best", k["split"], k["input"], k["out"],
                                                     k["weights"], overrides))
