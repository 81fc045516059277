"""Shared fixtures: compose the real conf/, run train.py as a user would, read run dirs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trainforge  # noqa: F401  (registers the config schemas)
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = Path(trainforge.__file__).parent / "conf"  # the packaged configs
# small and quick: what every test run trains unless it says otherwise
SMALL = ["data.num_samples=160", "data.image_size=32", "data.batch_size=16", "trainer.epochs=2",
         "log.progress=false"]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One data cache for the whole session (the glint file is generated once)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def env(data_dir) -> dict:
    e = dict(os.environ, TRAINFORGE_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    e.pop("HYDRA_FULL_ERROR", None)
    return e


@pytest.fixture
def train(env, tmp_path):
    """Run ``python train.py *args`` in ``tmp_path``; returns the CompletedProcess."""

    def _run(*args, cwd=None, check=True, timeout=300):
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd or tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"train.py {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return proc

    return _run


@pytest.fixture
def compose_cfg(data_dir, monkeypatch):
    """compose(overrides) over the real conf/ (with hydra's own config, for interpolations)."""
    monkeypatch.setenv("TRAINFORGE_DATA_DIR", str(data_dir))

    def _compose(*overrides):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="train", overrides=list(overrides))

    return _compose


@pytest.fixture
def train_here(data_dir, monkeypatch):
    """Train in this process: ``train_here(run_dir, *overrides)`` composes the overrides over
    conf/ and calls ``trainforge.run.train.run``, which is what train.py does once Hydra has
    composed: the same run directory, files and checks, without the seconds a new Python
    process costs to import torch. For what only the command line shows (exit codes,
    stderr, signals, Hydra's own directories) use ``train``."""
    import torch

    from trainforge.run.train import run

    monkeypatch.setenv("TRAINFORGE_DATA_DIR", str(data_dir))
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()

    def _run(run_dir, *overrides):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):  # a resume recomposes in it
            cfg = compose(config_name="train", overrides=list(overrides))
            return run(cfg, Path(run_dir), list(overrides))

    yield _run
    torch.set_num_threads(threads)  # what a run sets for its process
    torch.use_deterministic_algorithms(deterministic)


def contract(run_dir, batch_metrics=False) -> list:
    """Shortfalls of a run directory against docs/run-directory.md (tests/contract.py)."""
    from contract import shortfalls

    return shortfalls(run_dir, batch_metrics)


@pytest.fixture
def trainforge_log():
    """The messages the ``trainforge`` logger emits during the test (it does not propagate to
    pytest's caplog once a run in this process has set up its handlers)."""
    import logging

    messages = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("trainforge")
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


def glint_pair(folder) -> tuple:
    """Two glint files of SMALL's size (160 samples, 32x32): a good one, and one whose every
    other image is NaN (a run on it fails in its first step: non-finite loss)."""
    from trainforge.data.glint import make_glint

    images, masks = make_glint(160, 32)
    good = write_h5(Path(folder) / "good.h5", images=images, masks=masks)
    images[::2] = float("nan")
    return good, write_h5(Path(folder) / "nan.h5", images=images, masks=masks)


def write_h5(path, **arrays) -> Path:
    """An HDF5 file holding ``arrays`` (name -> numpy array); returns its path."""
    import h5py

    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return Path(path)


def build_wheel(out) -> "Path":
    """A wheel of this checkout, built from a copy in ``out`` (a build leaves build/ behind)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    source = Path(out) / "source"
    anywhere = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".whl", "outputs", "multirun")

    def ignore(folder, names):  # the checkout's own tests/ and examples/ (not a template's tests/)
        top = {"tests", "examples"} & set(names) if Path(folder) == ROOT else set()
        return set(anywhere(folder, names)) | top

    shutil.copytree(ROOT, source, ignore=ignore)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(Path(out) / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    return next((Path(out) / "dist").glob("trainforge-*.whl"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true) a skipped test fails unless it needs a GPU: CI installs every
    optional extra, so a skip there means a missing install, not a missing machine."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if "needs a CUDA GPU" not in reason:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every optional extra is installed: {reason}"
