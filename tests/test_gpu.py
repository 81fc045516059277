"""The GPU checks (marker ``gpu``): skipped without CUDA, run by ``benchmarks/gpu_checks.sh``
on a GPU machine. Each check lives in ``tests/gpu/`` as a script that prints one line per
point and returns non-zero when one fails."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
HERE = Path(__file__).resolve().parent / "gpu"


def _check(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_gpu_memory_reaches_the_epoch_block_csv_status_and_plots():
    assert _check("check_gpu_memory").main() == 0


def test_seqsetvae_step_and_validation_make_no_host_sync_on_a_gpu():
    assert _check("check_seqsetvae_gpu").main() == 0
