"""The record a benchmark script writes with ``--json PATH``: the machine, the command,
the date and the figures, so the README quotes only numbers a committed file backs."""
from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path


def machine() -> dict:
    """What ran it: host CPU, core count, memory, Python, torch and the GPU if one was used."""
    info = {"platform": platform.platform(), "processor": _cpu_model(), "cpu_count": os.cpu_count(),
            "python": platform.python_version()}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write(path, figures: dict) -> None:
    """Write {machine, command, date, figures} to ``path`` (JSON)."""
    record = {"machine": machine(),
              "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "figures": figures}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


def report(figures: dict, path=None) -> None:
    """Print one line per case (``case key=value ...``) and, with ``path``, write the record."""
    for case, values in figures.items():
        print(case, " ".join(f"{k}={v}" for k, v in values.items()), flush=True)
    if path:
        write(path, figures)
