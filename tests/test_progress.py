"""What stdout shows while training (a bar on a terminal, plain lines when piped),
TensorBoard scalars read back with TensorBoard's own reader, and log.progress spellings."""
from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest
from conftest import ROOT, SMALL

from trainforge.config import progress_mode, validate
from trainforge.engine.progress import resolve
from trainforge.errors import ConfigError

BATCH_LINE = re.compile(r"^Epoch \[(\d+)/\d+\] - Progress [\d.]+% \((\d+)/(\d+)\) - Batch Loss: \S+ - LR: \S+")


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def batch_lines(text: str) -> list:
    """(epoch, batch) of every batch line, in order (training.log lines carry a timestamp first)."""
    found = [BATCH_LINE.search(re.sub(r"^\S+ \S+ INFO ", "", ln)) for ln in text.splitlines()]
    return [(int(m.group(1)), int(m.group(2))) for m in found if m]


def in_terminal(args, env, cwd, timeout=600) -> tuple:
    """Run train.py with stdout and stderr on a pseudo-terminal of 120x40; (exit code, output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, stdin=slave,
                            stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(timeout=timeout), b"".join(chunks).decode(errors="replace")


def test_terminal_shows_a_progress_bar_and_no_batch_lines(env, tmp_path):
    run = tmp_path / "run"
    code, out = in_terminal([*SMALL, "log.progress=auto", f"hydra.run.dir={run}"], env, tmp_path)
    assert code == 0, out[-2000:]
    for epoch in (1, 2):  # tqdm's bar: description, percentage, count, rate, postfix
        assert re.search(rf"Epoch {epoch}/2: 100%\|[^|]*\| 8/8 \[[^\]]*(batch/s|s/batch), loss=[\d.e-]+, lr=", out)
        assert f"Epoch [{epoch}/2] done" in out
    assert batch_lines(out) == []  # the bar replaces the stdout lines
    log = (run / "training.log").read_text()
    assert batch_lines(log) == [(e, b) for e in (1, 2) for b in range(1, 9)]
    assert "%|" not in log  # the bar never reaches training.log


@pytest.mark.slow  # CI time: .ci/run runs it (the fast suite keeps under 5 minutes on 2 cores)
def test_piped_lines_tensorboard_and_resume(train, tmp_path):
    """Piped stdout (not a terminal): batch lines from the first batch of each epoch, then
    every log.interval; TensorBoard holds the CSVs' values, once each, also after a resume."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainforge import analyze

    run = tmp_path / "run"
    common = [*SMALL, "log.progress=auto", "log.interval=3", "log.tensorboard=true", "log.batch_metrics=true"]
    first = train(*common, "trainer.epochs=1", f"hydra.run.dir={run}")
    assert batch_lines(first.stdout) == [(1, 1), (1, 3), (1, 6)]
    assert "%|" not in first.stdout + first.stderr
    record = (run / ".hydra" / "overrides.yaml").read_text()
    second = train(*common, "trainer.epochs=2", f"resume={run}")
    assert batch_lines(second.stdout) == [(2, 1), (2, 3), (2, 6)]
    assert (run / ".hydra" / "overrides.yaml").read_text() == record  # the run's composition, kept by its resume
    assert batch_lines((run / "training.log").read_text()) == [(e, b) for e in (1, 2) for b in range(1, 9)]

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    epochs, batches = rows(run / "epoch_metrics.csv"), rows(run / "batch_metrics.csv")
    for col in ("train_loss", "val_loss", "val_dice", "lr", "epoch_time"):
        got = events.Scalars(f"epoch/{col}")
        assert [e.step for e in got] == [8, 16], col  # x axis: micro-batches since the start
        assert all(math.isclose(e.value, float(r[col]), rel_tol=1e-6) for e, r in zip(got, epochs)), col
    got = events.Scalars("batch/loss")
    assert [e.step for e in got] == list(range(1, 17))  # each batch once across the resume
    assert all(math.isclose(e.value, float(r["loss"]), rel_tol=1e-6) for e, r in zip(got, batches))

    facts = analyze.summary(analyze.load_run(run))
    assert facts["resumes"] == 1 and facts["epochs_done"] == 2 and facts["status"] == "COMPLETED"
    # on a CPU there is no GPU memory to report: the files do not change
    assert not any(c.startswith("gpu_mem") for c in epochs[0])
    assert "gpu_mem_peak_gib" not in json.loads((run / "status.json").read_text())


def test_progress_spellings_and_modes(compose_cfg):
    assert [progress_mode(v) for v in (True, False, "true", "False", "auto", "bar", "lines")] == \
        ["auto", "false", "auto", "false", "auto", "bar", "lines"]
    cfg = compose_cfg("log.progress=true")  # the old boolean spelling still composes
    validate(cfg)
    assert progress_mode(cfg.log.progress) == "auto"
    with pytest.raises(ConfigError, match=r"^log.progress=fancy: allowed values are auto, bar, lines, false"):
        validate(compose_cfg("log.progress=fancy"))

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert resolve("auto", Terminal()) == "bar" and resolve("auto", io.StringIO()) == "lines"
    assert resolve("lines", Terminal()) == "lines" and resolve("false", Terminal()) == "false"


def test_gpu_memory_fields_reach_the_block_and_the_csv_row():
    """GpuMemoryHook's fields (CUDA only, checked on a GPU by tests/gpu/check_gpu_memory.py)
    flow into the epoch block and the CSV row like any other epoch field."""
    from trainforge.engine.logging import epoch_block, flatten

    record = {"epoch": 1, "train": {"loss": 0.5, "loss_min": 0.4, "loss_max": 0.6}, "val": {"loss": 0.7},
              "lr": 0.1, "epoch_time": 2.0, "gpu_mem_peak_gib": 1.2345, "gpu_mem_reserved_gib": 2.5}
    assert "  GPU memory peak: 1.23 GiB allocated - 2.50 GiB reserved" in epoch_block(record, 3, 4.0).splitlines()
    row = flatten(record)
    assert list(row)[-2:] == ["gpu_mem_peak_gib", "gpu_mem_reserved_gib"] and row["gpu_mem_peak_gib"] == 1.2345
    del record["gpu_mem_peak_gib"], record["gpu_mem_reserved_gib"]
    assert "GPU" not in epoch_block(record, 3, 4.0) and list(flatten(record))[-1] == "epoch_time"
