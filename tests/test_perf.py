"""The cheap hot path (issue 10): data on the device, torch.compile, precision=auto, no
host sync per step. Speed itself is measured by benchmarks/bench_overhead.py, not here."""
from __future__ import annotations

import pytest
import torch

from conftest import SMALL
from trainforge.run.build import build
from trainforge.data.device import DeviceLoader
from trainforge.engine.amp import BF16_MIN_PARAMS, auto_precision
from trainforge.engine.checkpoint import load_checkpoint
from trainforge.errors import DataError


def test_auto_precision_picks_bf16_only_where_it_pays():
    wide, small = 1_926_433, 29_481  # wide UNet (base 32, depth 3) and the default UNet
    assert auto_precision("cuda", True, wide) == "bf16"
    assert auto_precision("cuda", True, small) == "fp32"  # launch-bound: bf16's casts cost more than they save
    assert auto_precision("cuda", True, small, compiled=True) == "bf16"  # compile fuses the casts
    assert auto_precision("cuda", True, BF16_MIN_PARAMS - 1) == "fp32"
    assert auto_precision("cuda", False, wide, compiled=True) == "fp32"  # no bf16 on this GPU
    assert auto_precision("cpu", True, 10 ** 9, compiled=True) == "fp32"


def fitted(compose_cfg, tmp_path, name, *overrides):
    trainer = build(compose_cfg(*SMALL, "trainer.epochs=2", *overrides), tmp_path / name)
    trainer.fit()
    return trainer


@pytest.mark.slow  # CI time: .ci/run runs it (the fast suite keeps under 5 minutes on 2 cores)
def test_data_on_device_gives_identical_losses_and_weights(compose_cfg, tmp_path):
    host = fitted(compose_cfg, tmp_path, "host")
    dev = fitted(compose_cfg, tmp_path, "dev", "data.on_device=true")
    assert isinstance(dev.train_loader, DeviceLoader) and not isinstance(host.train_loader, DeviceLoader)
    assert dev.batches_per_epoch == host.batches_per_epoch == 8
    strip = lambda h: [{k: v for k, v in r.items() if k != "epoch_time"} for r in h]  # noqa: E731
    assert strip(dev.history) == strip(host.history)  # every train and val figure, bitwise
    wd, wh = dev.model.state_dict(), host.model.state_dict()
    assert all(torch.equal(wd[k], wh[k]) for k in wh)


def test_device_loader_fetches_each_batch_by_one_index_op_in_sampler_order():
    from trainforge.data.sampler import EpochSampler

    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    sampler = EpochSampler(10, seed=3)
    sampler.load_state_dict({"epoch": 1, "position": 4})  # a resumed epoch: the first 4 are consumed
    batches = list(DeviceLoader((x, y), sampler, 4, torch.device("cpu")))
    order = sampler.order(1)[4:]
    assert [len(b[1]) for b in batches] == [4, 2]
    assert torch.equal(torch.cat([b[1] for b in batches]), order) and torch.equal(batches[0][0][:, 0], order[:4].float())


def test_data_on_device_refuses_what_cannot_live_there(compose_cfg, tmp_path):
    with pytest.raises(DataError, match="data.on_device=true: needs data.preload=true"):
        build(compose_cfg(*SMALL, "data.on_device=true", "data.preload=false"), tmp_path / "lazy")
    with pytest.raises(DataError, match="SeqSetData has no fixed-shape arrays"):
        build(compose_cfg("experiment=seqset", "data.num_patients=50", "data.on_device=true"), tmp_path / "seq")


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_model_trains_saves_plain_state_and_resumes_either_way(train, tmp_path, backend):
    """torch.compile on CPU, a tiny CNN on digits. aot_eager traces forward and backward
    like inductor but generates no code (seconds); inductor (gcc) takes minutes on 2 cores."""
    run = tmp_path / "run"
    tiny = ["experiment=digits", "model.channels=4", "data.batch_size=256", "log.progress=false",
            f"trainer.compile_backend={backend}"]
    train(*tiny, "trainer.compile=true", "trainer.epochs=1", f"hydra.run.dir={run}", timeout=900)
    ckpt = load_checkpoint(run / "latest_checkpoint.pth")
    assert ckpt["model"] and not any(k.startswith("_orig_mod.") or ".module." in k for k in ckpt["model"])
    log = (run / "training.log").read_text()
    assert log.count("torch.compile warm-up: the first step took") == 1
    # compiled -> plain; plain -> compiled is the same load (weights always go into the plain module)
    train(f"resume={run}", "trainer.epochs=2", "trainer.compile=false")
    plain = load_checkpoint(run / "latest_checkpoint.pth")
    assert plain["epoch"] == 2 and plain["model"].keys() == ckpt["model"].keys()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the sync check is a GPU property")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_no_host_sync_inside_an_epoch_on_gpu(compose_cfg, tmp_path, precision):
    """Every micro-batch of an epoch (step + per-step hooks) under sync debug mode "error";
    only the epoch boundary (summary, files, validation) may read from the device."""
    trainer = build(compose_cfg(*SMALL, "trainer.device=cuda", f"trainer.precision={precision}",
                                "data.num_samples=640", "trainer.epochs=2"), tmp_path / precision)
    trainer.fit()  # epoch 1: warm-up (cuDNN autotuning, allocator, first copies)
    trainer.epochs, trainer.epoch, trainer.batch_in_epoch = 3, 2, 0
    trainer.sampler.set_epoch(trainer.epoch)
    trainer.stats.reset()
    trainer._call("before_epoch")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in trainer.train_loader:
            trainer.run_step(batch)
            trainer._call("after_step")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.batches_per_epoch == 32 and trainer.batch_in_epoch == 32
    trainer._call("after_epoch")
    assert trainer.history[-1]["epoch"] == 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: auto is fp32 on the CPU")
def test_precision_auto_of_a_built_run_follows_compile_on_gpu(compose_cfg, tmp_path):
    """The small default UNet: fp32 eager, bf16 compiled (where the GPU has bf16)."""
    bf16 = torch.cuda.is_bf16_supported()
    modes = [build(compose_cfg(*SMALL, "trainer.device=cuda", f"trainer.compile={c}"), tmp_path / c).precision.mode
             for c in ("false", "true")]
    assert modes == ["fp32", "bf16" if bf16 else "fp32"]


def test_unknown_compile_backend_is_one_clear_error(compose_cfg, tmp_path):
    from trainforge.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.compile_backend=nope: not a torch.compile backend"):
        build(compose_cfg(*SMALL, "trainer.compile=true", "trainer.compile_backend=nope"), tmp_path / "run")


def test_batch_lines_written_directly_read_like_logged_ones(tmp_path):
    """Off-grid batch lines skip the logging machinery (hot path) but land in training.log
    in order, in the logger's format; a handler of the user's own turns the shortcut off."""
    import io
    import logging
    import re

    from trainforge.engine.logging import LOGGER, batch_file_writer, flush_handlers, setup_logging

    log = setup_logging(tmp_path)
    try:
        write = batch_file_writer()
        assert write is not None
        log.info("first", extra={"console": False, "batch": True})
        write("second")
        log.info("third")
        flush_handlers()
        stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO (\w+)$")
        lines = (tmp_path / "training.log").read_text().splitlines()
        assert [stamp.match(line).group(1) for line in lines] == ["first", "second", "third"]
        log.addHandler(logging.StreamHandler(io.StringIO()))  # it must see every record
        assert batch_file_writer() is None
    finally:
        for handler in list(logging.getLogger(LOGGER).handlers):
            logging.getLogger(LOGGER).removeHandler(handler)
            handler.close()


# aten ops that make a view or read metadata: no kernel on a GPU
VIEW_OPS = {"aten.detach", "aten.view", "aten.select", "aten.unsqueeze", "aten.alias", "aten.unbind", "aten.slice"}


class PartsLoss(torch.nn.Module):
    """Cross-entropy with ``n`` components; ``count`` is a buffer a hook may change in place
    after the step (as ELBO's beta is), returned as a component when ``live``."""

    def __init__(self, n: int, live: bool = False):
        super().__init__()
        self.component_names = tuple(f"part{i}" for i in range(n)) + (("count",) if live else ())
        self.register_buffer("count", torch.zeros(()))

    def forward(self, logits, target):
        loss = torch.nn.functional.cross_entropy(logits, target)
        parts = {name: loss for name in self.component_names}  # parts a loss computes anyway
        if "count" in parts:
            parts["count"] = self.count
        return loss, parts


def small_trainer(loss_fn, steps=128, hooks=()):
    """A BaseTrainer on one Linear over ``steps`` in-memory batches of 8, and its batches."""
    from trainforge.data.sampler import EpochSampler
    from trainforge.engine.amp import Precision
    from trainforge.engine.schedules import constant
    from trainforge.engine.trainer import BaseTrainer

    class Batches(list):
        batch_size = 8

    torch.manual_seed(0)
    x, y = torch.randn(steps * 8, 16), torch.randint(0, 3, (steps * 8,))
    batches = Batches((x[i:i + 8], y[i:i + 8]) for i in range(0, len(x), 8))
    model = torch.nn.Linear(16, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    trainer = BaseTrainer(model, opt, constant(opt, 1, 1), loss_fn, batches, EpochSampler(len(x), seed=0),
                          Precision("fp32", torch.device("cpu")), torch.device("cpu"), epochs=1, hooks=hooks)
    return trainer, batches


def test_step_bookkeeping_launches_under_one_kernel_per_step_and_one_more_for_any_components():
    """run_step's ops beyond the hand loop's (forward, backward, AdamW step, zero_grad) over
    128 steps: the loss and grad norm cost no kernel per step (the epoch sums every 64 steps and
    the sampled grad norm every 16 come to under one on average); components add one stack
    per step whatever their number; the weights are bitwise the hand loop's."""
    import collections
    import copy

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.kernels = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func.overloadpacket)
            if name not in VIEW_OPS:
                self.kernels[name] += 1
            return func(*args, **(kwargs or {}))

    def extra_per_step(components: int) -> float:
        trainer, batches = small_trainer(PartsLoss(components))
        hand_model = copy.deepcopy(trainer.model)
        opt, loss_fn = torch.optim.AdamW(hand_model.parameters(), lr=1e-3), PartsLoss(components)
        with Count() as hand:
            for inputs, target in batches:
                loss_fn(hand_model(inputs), target)[0].backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        with Count() as ours:
            for batch in batches:
                trainer.run_step(batch)
        assert not hand.kernels - ours.kernels  # the same step underneath
        assert torch.equal(trainer.model.weight, hand_model.weight)  # and the same arithmetic
        return sum((ours.kernels - hand.kernels).values()) / len(batches)

    none, one, three = extra_per_step(0), extra_per_step(1), extra_per_step(3)
    assert 0 < none < 1
    assert one == three == none + 1


def test_a_component_changed_in_place_after_its_step_is_logged_as_it_was():
    """A loss may return a buffer as a component and change it after the step (ELBO's beta
    follows the step count): each record and the epoch average hold the value of its step,
    though the records are read later (here: all at the end)."""
    from trainforge.engine.trainer import HookBase

    class Bump(HookBase):
        def after_step(self):
            self.trainer.loss_fn.count += 1  # in place, as LossStepHook sets beta

    trainer, _ = small_trainer(PartsLoss(0, live=True), steps=8, hooks=[Bump()])
    trainer.fit()
    records = trainer.collect(block=True)
    assert [r["values"][1] for r in records] == [float(i) for i in range(8)]
    assert trainer.stats.summary()["count"] == 3.5


def test_bench_overhead_prints_one_line_per_case_with_its_stable_keys(env, tmp_path):
    """The benchmark that checks the speed targets runs (a GPU session has minutes, not a
    retry) and prints the keys its readers use, on a tiny budget here."""
    import json
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path / "bench.jsonl"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_overhead.py"), "--device", "cpu",
                           "--cases", "tiny_fp32,default", "--rounds", "2", "--warmup", "0", "--steps", "3",
                           "--control", "--json", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["case"] for r in rows] == ["tiny_fp32", "default"]
    for row in rows:
        assert row["steps"] == 3 and row["rounds"] == 2
        for key in ("a", "b", "c", "c_dev", "a2"):
            assert row[f"{key}_ms"] > 0 and len(row["rounds_ms"][key]) == 2
        for key in ("c_over_a", "c_over_b", "c_dev_over_a", "a2_over_a", "c_over_a_paired", "c_dev_over_a_paired"):
            assert row[f"{key}_ratio"] > 0
        assert abs(row["c_over_a_ratio"] - row["c_ms"] / row["a_ms"]) < 1e-3 * row["c_over_a_ratio"]
    recorded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["case"] for r in recorded] == ["tiny_fp32", "default"] and all("machine" in r for r in recorded)
