"""Log lines and metric files of a run directory (docs/run-directory.md: Log lines).

Messages go through the Python logger ``trainforge``: ``training.log`` gets every record
with a timestamp; stdout gets the records not marked ``console=False`` (batch lines off
the ``log.interval`` grid). Only rank 0 has handlers.
"""
from __future__ import annotations

import csv
import datetime
import io
import logging
import sys
import time
from pathlib import Path

from trainforge.files import BATCH_CSV, EPOCH_CSV, METRICS_JSON, TRAINING_LOG, RunRecord
from trainforge.errors import WriteError

LOGGER = "trainforge"
RULE = "=" * 80
FILE_FORMAT = "%(asctime)s %(levelname)s %(message)s"  # training.log's lines


class _ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "console", True)


class _LogFile(logging.FileHandler):
    """training.log, where a failed write (disk full, permission) ends the run with a
    WriteError instead of logging's "--- Logging error ---" on stderr; later records are
    dropped (the file can take no more)."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def flush(self) -> None:
        if not self.failed:
            super().flush()  # an OSError here reaches emit's handleError below
            return
        try:  # already reported by the emit that met it: a flush in cleanup must not mask it
            super().flush()
        except OSError:
            pass

    def close(self) -> None:
        try:
            super().close()
        except OSError:
            pass

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) and not self.failed:
            self.failed = True
            raise WriteError(self.baseFilename, exc) from None
        super().handleError(record)


class BatchedFileHandler(_LogFile):
    """``training.log`` without a flush per batch line: records marked ``batch=True`` stay in
    the file's buffer until the next other record, ``FLUSH_S`` seconds, or an explicit
    ``flush()`` (LoggingHook flushes before every checkpoint, so a crash loses no line the
    last checkpoint covers)."""

    FLUSH_S = 1.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._in_batch_emit, self._flushed = False, time.monotonic()
        self._second, self._stamp = None, ""

    def emit(self, record: logging.LogRecord) -> None:
        self._in_batch_emit = getattr(record, "batch", False)
        try:
            super().emit(record)
        finally:
            self._in_batch_emit = False

    def flush(self) -> None:
        if self._in_batch_emit and not self._flush_due():
            return
        super().flush()
        self._flushed = time.monotonic()

    def _flush_due(self) -> bool:
        return time.monotonic() - self._flushed >= self.FLUSH_S

    def write_batch_line(self, message: str) -> None:
        """A batch line for this file alone, as ``emit`` would write it (``FILE_FORMAT``,
        logging's default time format), without building a LogRecord (the logging
        machinery costs more per line than the rest of a small step). The second's text is
        formatted once per second."""
        if self.failed:
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(logging.Formatter.default_time_format, time.localtime(second))
        asctime = logging.Formatter.default_msec_format % (self._stamp, int((now - second) * 1000))
        line = FILE_FORMAT % {"asctime": asctime, "levelname": "INFO", "message": message} + self.terminator
        with self.lock:
            try:
                if self.stream is None:
                    self.stream = self._open()
                self.stream.write(line)
                if self._flush_due():
                    self.flush()
            except OSError as exc:
                self.failed = True
                raise WriteError(self.baseFilename, exc) from None


def batch_file_writer():
    """``training.log``'s direct writer for batch lines that stdout does not show, or None
    when the logger has a handler besides setup_logging's two (it must see every record)."""
    handlers = [h for h in logging.getLogger(LOGGER).handlers if not isinstance(h, logging.NullHandler)]
    files = [h for h in handlers if isinstance(h, BatchedFileHandler)]
    filtered = all(h in files or any(isinstance(f, _ConsoleFilter) for f in h.filters) for h in handlers)
    return files[0].write_batch_line if len(files) == 1 and filtered else None


def flush_handlers() -> None:
    """Write out whatever the ``trainforge`` logger's handlers buffer."""
    for handler in logging.getLogger(LOGGER).handlers:
        handler.flush()


class _Held(logging.Filter):
    """Keeps ``training.log``'s records back until ``release_held_records()``: a run refused
    before it starts (a bad resume target, an error found while building) neither creates
    the file nor adds a line to another run's."""

    def __init__(self):
        super().__init__()
        self.records: list = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


def release_held_records() -> None:
    """Write what ``setup_logging(hold=True)`` kept back, and every record from now on."""
    for handler in logging.getLogger(LOGGER).handlers:
        for held in [f for f in handler.filters if isinstance(f, _Held)]:
            handler.removeFilter(held)
            for record in held.records:
                handler.handle(record)


def setup_logging(run_dir, main: bool = True, hold: bool = False) -> logging.Logger:
    """(Re)attach the handlers of the ``trainforge`` logger for one run directory. With
    ``hold``, training.log gets nothing (is not even created) until ``release_held_records``."""
    log = logging.getLogger(LOGGER)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    log.setLevel(logging.INFO)
    log.propagate = False
    if not main:
        log.addHandler(logging.NullHandler())
        return log
    file = BatchedFileHandler(Path(run_dir) / TRAINING_LOG, mode="a", encoding="utf-8", delay=True)
    file.setFormatter(logging.Formatter(FILE_FORMAT))
    if hold:
        file.addFilter(_Held())
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    console.addFilter(_ConsoleFilter())
    log.addHandler(file)
    log.addHandler(console)
    return log


def batch_line(epoch: int, epochs: int, batch: int, batches: int, loss: float, lr: float, extra: str = "") -> str:
    """``Epoch [e/E] - Progress p% (i/N) - Batch Loss: x - LR: y`` (+ optional fields)."""
    pct = 100.0 * batch / batches if batches else 100.0
    line = (f"Epoch [{epoch}/{epochs}] - Progress {pct:.1f}% ({batch}/{batches}) - "
            f"Batch Loss: {loss:.6f} - LR: {lr:.8f}")
    return f"{line} - {extra}" if extra else line


def epoch_block(record: dict, epochs: int, eta_s: float, note: str = "") -> str:
    """The framed summary printed after each epoch."""
    train, val = record["train"], record.get("val", {})
    lines = [RULE, f"Epoch [{record['epoch']}/{epochs}] done",
             f"  Train loss: avg {train['loss']:.6f} - min {train['loss_min']:.6f} - max {train['loss_max']:.6f}"]
    parts = [f"{k} {v:.6g}" for k, v in train.items() if k not in ("loss", "loss_min", "loss_max")]
    if parts:
        lines.append("  Train: " + " - ".join(parts))
    lines.append(f"  LR: {record['lr']:.8f}")
    lines.append(f"  Epoch time: {record['epoch_time']:.2f}s - ETA: {datetime.timedelta(seconds=round(eta_s))}")
    if "gpu_mem_peak_gib" in record:
        lines.append(f"  GPU memory peak: {record['gpu_mem_peak_gib']:.2f} GiB allocated - "
                     f"{record['gpu_mem_reserved_gib']:.2f} GiB reserved")
    if val:
        lines.append("  Validation: " + " - ".join(f"{k} {v}" if isinstance(v, int) else f"{k} {v:.6f}"
                                                   for k, v in val.items()))  # counts stay counts
    if note:
        lines.append(f"  {note}")
    lines.append(RULE)
    return "\n".join(lines)


def flatten(record: dict) -> dict:
    """One epoch record -> one CSV row (train_*, val_*, lr, epoch_time, then any extra
    top-level fields such as gpu_mem_peak_gib)."""
    row = {"epoch": record["epoch"]}
    row.update({f"train_{k}": v for k, v in record["train"].items()})
    row.update({f"val_{k}": v for k, v in record.get("val", {}).items()})
    row["lr"], row["epoch_time"] = record["lr"], record["epoch_time"]
    row.update({k: v for k, v in record.items() if k not in ("epoch", "train", "val", "lr", "epoch_time")})
    return row


def write_epoch_files(record, history: list) -> None:
    """Rewrite ``epoch_metrics.csv`` and ``metrics.json`` from the whole history (atomic),
    through the run's ``RunRecord`` (nothing off rank 0).

    Rewriting keeps both files exactly equal to the checkpointed history, also after a
    resume; the cost is a few kB per epoch.
    """
    record = RunRecord.of(record)
    record.text(EPOCH_CSV, table_csv([flatten(r) for r in history]))
    record.json(METRICS_JSON, history)


def table_csv(rows: list) -> str:
    """Dict rows as CSV text; the columns are every key, in order of first appearance."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for row in rows for k in row)), restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class BatchCSV:
    """``batch_metrics.csv``: one row per batch, appended through the run's ``RunRecord``;
    buffered, flushed per epoch."""

    def __init__(self, record, columns: list):
        self.record, self.columns = RunRecord.of(record), columns
        self.rows: list = []
        self.record.append_rows(BATCH_CSV, [], header=columns)

    def add(self, row: list) -> None:
        self.rows.append(row)

    def flush(self) -> None:
        if self.rows:
            self.record.append_rows(BATCH_CSV, self.rows)
            self.rows = []

    def truncate_after(self, epoch: int, batch: int) -> None:
        """Drop rows past (epoch, batch), 1-based, so a resume appends each batch once."""
        self.record.keep_rows(BATCH_CSV, lambda r: (int(r[0]), int(r[1])) <= (epoch, batch))
