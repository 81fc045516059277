"""The sweep launchers (hydra/launcher=local_gpus, slurm): GPU pool, queue, report,
signals, resumable sweeps. A fake pool is CUDA_VISIBLE_DEVICES=0,1 on a CPU machine:
each job's status.json records the ids it saw; the parent's start/end lines give order."""
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import CONF, ROOT, SMALL, glint_pair

from hydra_plugins.trainforge_launcher._pool import Pool, cores, threads_per_job, visible_gpus
from trainforge.engine.checkpoint import load_checkpoint
from trainforge.errors import ConfigError

ONE = [*SMALL, "trainer.epochs=1"]


def sweep(env, tmp_path, *args, cvd=None, wait=True, one_thread=True):
    """``python train.py -m ARGS hydra.sweep.dir=tmp/sweep`` with a fake GPU pool ``cvd``.
    One torch thread per job: a second one slows a loaded 2-core CI box many times over."""
    e = dict(env)
    e.pop("CUDA_VISIBLE_DEVICES", None)
    if cvd is not None:
        e["CUDA_VISIBLE_DEVICES"] = cvd
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *(["hydra.launcher.threads_per_job=1"] * one_thread), *args,
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:  # SIGTERM, not SIGKILL: the sweep stops its jobs
        proc.terminate()
        out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def events(stdout: str) -> list:
    """The parent's start/end lines in order: [("start", 0), ("end", 0), ...]."""
    return [(kind, int(num)) for kind, num in re.findall(r"^\[[\d:]+\] (start|end) +#(\d+)", stdout, re.M)]


def most_at_once(evs: list) -> int:
    running = peak = 0
    for kind, _ in evs:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    return peak


def status(tmp_path, job) -> dict:
    return json.loads((tmp_path / "sweep" / str(job) / "status.json").read_text())


def summary(tmp_path) -> list:
    with open(tmp_path / "sweep" / "summary.csv") as f:
        return list(csv.DictReader(f))


def signal_job(proc, tmp_path, job: int, sig) -> None:
    """Once job ``job`` of the sweep ``proc`` runs, send ``sig`` to its training process alone."""
    record, deadline = tmp_path / "sweep" / str(job) / "status.json", time.time() + 300
    while not (record.exists() and json.loads(record.read_text())["status"] == "RUNNING"):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    os.kill(json.loads(record.read_text())["pid"], sig)


def leftovers(marker: str) -> list:
    """Processes whose command line mentions ``marker`` (the sweep dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            pass
    return found


# ---- the pool, without processes --------------------------------------------------------
def test_pool_reads_cuda_visible_devices_and_spreads_jobs_before_packing():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "3, 5"}) == ["3", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-a1,GPU-b2"}) == ["GPU-a1", "GPU-b2"]
    pool = Pool(["3", "5"], gpus_per_job=1, jobs_per_gpu=2, max_parallel=None, n_cores=8)
    assert pool.max_parallel == 4
    taken = [pool.take() for _ in range(3)]
    assert taken == [("3",), ("5",), ("3",)] and pool.free()
    pool.take()
    assert not pool.free()
    pool.give_back(("5",))
    assert pool.free() and pool.take() == ("5",)
    pairs = Pool(["0", "1", "2", "3", "4"], gpus_per_job=2, jobs_per_gpu=1, max_parallel=None, n_cores=8)
    assert pairs.groups == [("0", "1"), ("2", "3")] and pairs.max_parallel == 2
    assert threads_per_job(16, 2, 2) == 4 and threads_per_job(2, 4, 1) == 1


def test_pool_refuses_what_it_cannot_give():
    with pytest.raises(ConfigError, match="gpus_per_job=3: the pool has only 2"):
        Pool(["0", "1"], gpus_per_job=3, jobs_per_gpu=1, max_parallel=None, n_cores=2)
    with pytest.raises(ConfigError, match="max_parallel=3: the pool has 2 slot"):
        Pool(["0", "1"], gpus_per_job=1, jobs_per_gpu=1, max_parallel=3, n_cores=2)
    cpu = Pool([], gpus_per_job=1, jobs_per_gpu=1, max_parallel=None, n_cores=2)
    assert cpu.take() is None and cpu.max_parallel == 2


# ---- AC1, AC2: a fake pool ------------------------------------------------------------------
@pytest.mark.slow  # CI time: the pool's spreading is tested above, its queue by the signal tests
def test_fake_pool_one_id_per_job_two_at_once_and_a_true_queue(env, tmp_path):
    """Job 1 is long: jobs 2 and 3 start as soon as a slot frees, while job 1 still runs."""
    proc = sweep(env, tmp_path, *ONE, "data.num_samples=160,1600,160,160", cvd="0,1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    evs = events(proc.stdout)
    assert sorted(evs) == sorted([(k, n) for n in range(4) for k in ("start", "end")])
    assert most_at_once(evs) == 2
    for late in (2, 3):  # a true queue: each later job starts right when a job ends
        assert evs[evs.index(("start", late)) - 1][0] == "end", proc.stdout
    assert evs.index(("start", 2)) < evs.index(("end", 1)), proc.stdout  # no batch barrier behind job 1
    seen = [status(tmp_path, j)["cuda_visible_devices"] for j in range(4)]
    assert all(s in ("0", "1") for s in seen) and seen[0] != seen[1]
    assert [r["status"] for r in summary(tmp_path)] == ["COMPLETED"] * 4
    assert [r["gpus"] for r in summary(tmp_path)] == seen
    assert not (tmp_path / "sweep" / ".submitit" / "%j").exists()  # submitit's empty placeholder folder
    assert re.search(r"job +overrides +status +best_val_dice +epochs +run_dir", proc.stdout)


@pytest.mark.slow  # CI time: .ci/run runs it (the fast suite keeps under 5 minutes)
def test_jobs_per_gpu_packs_two_jobs_on_one_id_and_they_share_the_cores(env, tmp_path):
    """Two jobs at once on one id; a job without trainer.threads (or given null) gets cores / 2
    threads, a job given a number keeps it. (On 2 cores: 1 thread each, as the other tests.)"""
    proc = sweep(env, tmp_path, *ONE, "trainer.threads=null,2", "hydra.launcher.jobs_per_gpu=2", cvd="0",
                 one_thread=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert most_at_once(events(proc.stdout)) == 2
    runs = [status(tmp_path, j) for j in (0, 1)]
    assert [r["cuda_visible_devices"] for r in runs] == ["0", "0"]
    assert max(r["started"] for r in runs) < min(r["finished"] for r in runs)  # trained at the same time
    threads = [yaml.safe_load((tmp_path / "sweep" / str(j) / "config.yaml").read_text())["trainer"]["threads"]
               for j in (0, 1)]
    assert threads == [threads_per_job(cores(), 2, 1), 2]
    assert [r["gpus"] for r in summary(tmp_path)] == ["0", "0"]
    # the same directory with other values is refused before any job, and keeps its record
    record = (tmp_path / "sweep" / "multirun.yaml").read_text()
    again = sweep(env, tmp_path, *ONE, "trainer.threads=null,2", "seed=5", "hydra.launcher.jobs_per_gpu=2",
                  cvd="0", one_thread=False)
    assert again.returncode == 2 and "job 0 there ran" in again.stderr, again.stderr
    assert (tmp_path / "sweep" / "multirun.yaml").read_text() == record


@pytest.mark.slow  # the grouping itself is unit-tested above
def test_gpus_per_job_gives_each_job_its_own_ids(env, tmp_path):
    # trainer.devices=1 set by hand: only the id assignment is under test here, not DDP
    proc = sweep(env, tmp_path, *ONE, "seed=0,1", "trainer.devices=1", "hydra.launcher.gpus_per_job=2",
                 cvd="4,5,6,7")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(status(tmp_path, j)["cuda_visible_devices"] for j in (0, 1)) == ["4,5", "6,7"]


# ---- AC3: a failing job -------------------------------------------------------------------
@pytest.mark.slow  # CI time: .ci/run runs it
def test_a_failing_job_is_reported_the_others_complete_and_the_sweep_exits_nonzero(env, tmp_path):
    """Jobs 1 and 3 fail in their first step (NaN images: a non-finite loss); job 2 is stopped
    by a signal of its own (not the sweep's): all three count as not completed."""
    good, bad = glint_pair(tmp_path)
    proc = sweep(env, tmp_path, *SMALL, f"data.path={good},{bad}", "trainer.epochs=1,100", wait=False)
    signal_job(proc, tmp_path, 2, signal.SIGUSR1)  # good.h5, 100 epochs
    out, err = proc.communicate(timeout=300)
    proc = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "trainforge: error: 3 of 4 job(s) did not complete (#1 FAILED, #2 PREEMPTED, #3 FAILED)"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(rf"^ +1 +trainer.epochs=1 data.path={bad} +FAILED", proc.stdout, re.M), proc.stdout
    assert "non-finite loss (nan) at epoch 1" in proc.stdout
    rows = summary(tmp_path)
    assert [r["status"] for r in rows] == ["COMPLETED", "FAILED", "PREEMPTED", "FAILED"]
    assert "non-finite loss (nan)" in rows[1]["error"] and Path(rows[1]["log"]).is_file()
    assert not rows[0]["error"]
    record = status(tmp_path, 0)  # the completed job's row holds its final metrics and best value
    finals = {f"{part}_{k}": v for part in ("train", "val") for k, v in record["final"][part].items()}
    assert {"val_loss", "val_dice", "train_loss"} <= set(finals)
    assert all(math.isclose(float(rows[0][k]), v, rel_tol=1e-9) for k, v in finals.items()), (rows[0], finals)
    assert float(rows[0]["best_val_dice"]) == record["best"]["value"] and int(rows[0]["best_epoch"]) == 1


def test_a_killed_job_is_failed_in_its_status_and_the_report(env, tmp_path):
    """SIGKILL (or the OOM killer) leaves a job no time to record its end: the sweep does."""
    proc = sweep(env, tmp_path, *ONE, "trainer.epochs=100", "seed=0", wait=False)
    signal_job(proc, tmp_path, 0, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    why = "its process was killed before it recorded its end"
    assert re.search(rf"end +#0 FAILED in [\d.]+ s: {why}", out), out
    assert status(tmp_path, 0)["status"] == "FAILED" and why in status(tmp_path, 0)["error"]
    assert summary(tmp_path)[0]["status"] == "FAILED" and why in summary(tmp_path)[0]["error"]


@pytest.mark.slow  # CI time (two sweeps): a convenience of re-running; the refusals themselves are above
def test_a_job_refused_while_building_can_run_again_with_a_corrected_value(env, tmp_path):
    """No metric val_nosuch (found when the job builds): the job FAILED and its directory holds
    no run, so the sweep again with another value there runs it (it was refused as 'ran other
    overrides')."""
    first = sweep(env, tmp_path, *ONE, "checkpoint.monitor=val_nosuch")
    assert first.returncode == 1 and "checkpoint.monitor=val_nosuch: not a metric" in first.stdout, first.stdout
    again = sweep(env, tmp_path, *ONE, "checkpoint.monitor=val_loss", "checkpoint.mode=min")
    assert again.returncode == 0, again.stderr
    assert status(tmp_path, 0)["status"] == "COMPLETED"
    assert "checkpoint.monitor=val_loss" in (tmp_path / "sweep" / "0" / ".hydra" / "overrides.yaml").read_text()


def test_a_sweep_refused_before_any_job_leaves_no_directory(env, tmp_path):
    """A launcher value no job can run with, an option that does not exist, or a job's value
    that no run can train with, is one line (exit 2) before any job starts, and the new
    multirun/DATE/TIME/ (holding only Hydra's multirun.yaml) is removed; so is a new
    hydra.sweep.dir of the user's (not its parent). All at once: each names its own directory."""
    no_slurm = dict(env, PATH=os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                              if not (Path(p) / "srun").exists()))
    given = tmp_path / "given" / "sweep"
    (tmp_path / "given").mkdir()
    cases = {"hydra.launcher.timeout_min=0": "hydra.launcher.timeout_min",
             "hydra.launcher.stop_grace_s=-5": "hydra.launcher.stop_grace_s",
             "loss=focal,focl": "loss=focl: no such option", "hydra/launcher=slurm": "srun not found",
             "optimizer.lr=1e-3,-5": "optimizer.lr=-5): optimizer.lr=-5.0: must be a number > 0"}
    procs = [(key, subprocess.Popen([sys.executable, str(ROOT / "train.py"), "-m", *ONE, *args], cwd=tmp_path,
                                    env=no_slurm, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
             for args, key in [*(([a], k) for a, k in cases.items()),
                               (["optimizer.lr=1e-3,-5", f"hydra.sweep.dir={given}"], "optimizer.lr=-5")]]
    for key, proc in procs:
        err = proc.communicate(timeout=300)[1]
        assert proc.returncode == 2 and err.strip().splitlines() == [err.strip()], err
        assert err.startswith("trainforge: error: ") and key in err, err
    assert not (tmp_path / "multirun").exists() or list((tmp_path / "multirun").iterdir()) == []
    assert not given.exists() and (tmp_path / "given").is_dir()


# ---- AC4: SIGTERM on the parent, then the same sweep again -------------------------------------
@pytest.mark.slow  # CI time: .ci/run runs it
def test_hangup_of_a_sweep_of_ddp_jobs_lets_their_ranks_save(env, tmp_path):
    """SIGHUP (a closed terminal) stops a sweep as SIGTERM does (it left the jobs running
    unsupervised). The sweep repeats its SIGTERM to the jobs every 2 s for jobs still starting;
    a DDP job passes the first on to its ranks and not the repeats (they killed ranks still
    finishing a long accumulation window: FAILED, no checkpoint)."""
    args = ["data.num_samples=2000", "data.image_size=64", "data.batch_size=16", "trainer.grad_accum=50",
            "trainer.devices=2", "trainer.epochs=2", "log.progress=false", "seed=0"]  # one window an epoch
    parent = sweep(env, tmp_path, *args, wait=False)
    log, deadline = tmp_path / "sweep" / "0" / "training.log", time.time() + 240
    while not (log.exists() and "(2/50)" in log.read_text()):
        assert time.time() < deadline and parent.poll() is None, parent.communicate()
        time.sleep(0.1)
    parent.send_signal(signal.SIGHUP)
    out, err = parent.communicate(timeout=180)
    assert parent.returncode == 75, err
    assert "sweep stopped by SIGHUP: 1 job(s) saved and stopped" in err, err
    assert [r["status"] for r in summary(tmp_path)] == ["PREEMPTED"]
    record = status(tmp_path, 0)
    assert record["status"] == "PREEMPTED" and record["exit_code"] == 75 and record["step"] == 1
    assert load_checkpoint(tmp_path / "sweep" / "0" / "latest_checkpoint.pth")["world_size"] == 2
    assert leftovers(str(tmp_path / "sweep")) == []


@pytest.mark.slow  # CI time (a minute): two sweeps and five jobs
def test_sigterm_stops_every_job_and_the_rerun_finishes_the_sweep(env, tmp_path):
    """One GPU: job 0 completes, job 1 runs (it has a checkpoint), job 2 waits in the queue."""
    args = [*SMALL, "data.num_samples=160,2400,160", "trainer.epochs=2", "checkpoint.every_n_steps=5"]
    parent = sweep(env, tmp_path, *args, cvd="0", wait=False)
    long_job, deadline = tmp_path / "sweep" / "1", time.time() + 240
    while not ((tmp_path / "sweep/0/status.json").exists() and status(tmp_path, 0)["status"] == "COMPLETED"
               and (long_job / "latest_checkpoint.pth").exists()):
        assert time.time() < deadline and parent.poll() is None, parent.communicate()
        time.sleep(0.2)
    parent.send_signal(signal.SIGTERM)
    out, err = parent.communicate(timeout=180)
    assert parent.returncode == 75, err
    assert "trainforge: stopped: sweep stopped by SIGTERM" in err
    assert [r["status"] for r in summary(tmp_path)] == ["COMPLETED", "PREEMPTED", "NOT_STARTED"]
    assert status(tmp_path, 1)["status"] == "PREEMPTED" and status(tmp_path, 1)["exit_code"] == 75
    assert leftovers(str(tmp_path / "sweep")) == []
    first_log = (tmp_path / "sweep/0/training.log").read_text()

    again = sweep(env, tmp_path, *args, cvd="0")
    assert again.returncode == 0, again.stderr[-2000:]
    assert re.search(r"skip +#0 .*COMPLETED before", again.stdout) and ("start", 0) not in events(again.stdout)
    assert (tmp_path / "sweep/0/training.log").read_text() == first_log
    assert "Resumed from" in (long_job / "training.log").read_text()
    with open(long_job / "epoch_metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    assert [r["status"] for r in summary(tmp_path)] == ["COMPLETED"] * 3


STAND_INS = {  # a SLURM whose jobs never end; after the cancel, sacct hangs
    "srun": "exit 0\n",
    "sbatch": 'echo "Submitted batch job 4242"\n',
    "scancel": 'echo "$@" >> "$STAND_IN_LOG/scancel"\n',
    "sacct": '[ -e "$STAND_IN_LOG/scancel" ] && exec python3 -c "import time; time.sleep(300)" "$STAND_IN_LOG"\n'
             'echo "JobID|State|NodeList"\n'
             'echo "4242_0|RUNNING|node1"\necho "4242_1|RUNNING|node1"\n',
}


@pytest.mark.slow  # CI time: the stand-in SLURM takes 15 s a case
@pytest.mark.parametrize("second", ["SIGINT", "SIGTERM"])
def test_a_second_signal_ends_a_slurm_sweep_at_once_and_says_what_may_still_run(env, tmp_path, second):
    """Ctrl-C cancels the SLURM jobs and waits for them to end; a second Ctrl-C (here while
    sacct hangs) ends the parent at once, naming the jobs that may still run and how to cancel
    them; no sacct is left behind."""
    bin_dir, log = tmp_path / "slurm_bin", tmp_path / "slurm_log"
    bin_dir.mkdir(), log.mkdir()
    for name, body in STAND_INS.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    e = dict(env, PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", STAND_IN_LOG=str(log))
    parent = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm",
                               "hydra.launcher.poll_s=0.2", *ONE, "loss=focal,dice",
                               f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, env=e,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _second_signal_ends_the_wait(parent, log, getattr(signal, second), time.time() + 120)
    finally:
        parent.kill()
        for pid in leftovers(str(log)):
            os.kill(pid, signal.SIGKILL)


def _second_signal_ends_the_wait(parent, log, second, deadline) -> None:
    while "submitted as SLURM array 4242" not in parent.stdout.readline():
        assert time.time() < deadline and parent.poll() is None, parent.communicate()
    parent.send_signal(signal.SIGINT)
    while not (log / "scancel").exists():
        assert time.time() < deadline and parent.poll() is None, parent.communicate()
        time.sleep(0.1)
    time.sleep(3)  # the parent waits on: sacct (hanging now) says the jobs run
    assert parent.poll() is None and leftovers(str(log)) != []  # the hanging sacct
    sent = time.time()
    parent.send_signal(second)
    out, err = parent.communicate(timeout=60)
    assert time.time() - sent < 10, "the second signal did not end the sweep at once"
    assert parent.returncode == 75, err
    assert sorted((log / "scancel").read_text().split()) == ["4242_0", "4242_1"]
    left = "2 SLURM job(s) may still be running (4242_0, 4242_1): `scancel 4242` cancels them"
    assert left in out and left in err.strip().splitlines()[-1], (out, err)
    assert [r["status"] for r in summary(log.parent)] == ["UNKNOWN", "UNKNOWN"]
    left_behind = leftovers(str(log))
    assert left_behind == [], [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left_behind]


@pytest.mark.slow  # CI time: the same path is covered by other sweep tests
def test_a_rerun_with_other_overrides_is_refused(env, tmp_path):
    (tmp_path / "sweep/0/.hydra").mkdir(parents=True)
    (tmp_path / "sweep/0/.hydra/overrides.yaml").write_text("- seed=7\n")
    record = '{"status": "COMPLETED", "epoch": 1}'  # the job directory holds a run (one holding none is redone)
    (tmp_path / "sweep/0/status.json").write_text(record)
    proc = sweep(env, tmp_path, *ONE, "seed=1")
    assert proc.returncode == 2 and "job 0 there ran 'seed=7'" in proc.stderr
    assert (tmp_path / "sweep/0/status.json").read_text() == record


# ---- timeouts and preemption: a requeued job resumes --------------------------------------------
@pytest.mark.slow
def test_a_signalled_job_is_requeued_and_resumes_from_its_checkpoint(env, tmp_path):
    """SIGUSR2 is what the controller sends at timeout (SLURM: at the time limit or on
    preemption): the job saves, submitit requeues the same job, which resumes (resume=auto)."""
    parent = sweep(env, tmp_path, *SMALL, "seed=0", "data.num_samples=1600", "checkpoint.every_n_steps=5",
                   wait=False)
    job = tmp_path / "sweep" / "0"
    deadline = time.time() + 240
    while not (job / "latest_checkpoint.pth").exists():
        assert time.time() < deadline and parent.poll() is None, parent.communicate()
        time.sleep(0.1)
    os.kill(status(tmp_path, 0)["pid"], signal.SIGUSR2)
    out, err = parent.communicate(timeout=300)
    assert parent.returncode == 0, out[-2000:] + err[-2000:]
    log = (job / "training.log").read_text()
    assert "SIGUSR2 received" in log and "Resumed from" in log and "starting from scratch" not in log
    with open(job / "epoch_metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    assert status(tmp_path, 0)["status"] == "COMPLETED"


# ---- AC5: SLURM without a cluster -------------------------------------------------------------
def test_slurm_parameters_from_the_config(tmp_path, monkeypatch):
    import submitit

    from hydra_plugins.trainforge_launcher._slurm import slurm_parameters

    cfg = _compose_hydra("hydra/launcher=slurm", "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=4",
                         "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=600",
                         f"hydra.sweep.dir={tmp_path}")
    params = slurm_parameters(cfg.hydra.launcher)
    assert params["gpus_per_node"] == 4 and params["ntasks_per_node"] == 4 and params["nodes"] == 2
    assert params["time"] == 600 and params["signal_delay_s"] == 120 and params["array_parallelism"] == 256
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/srun").write_text("#!/bin/sh\nexit 1\n")  # SlurmExecutor only checks that srun exists
    (tmp_path / "bin/srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    executor = submitit.SlurmExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(**params)  # submitit's own check of every name and value
    script = executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")
    for line in ("--gpus-per-node=4", "--ntasks-per-node=4", "--nodes=2", "--signal=USR2@120",
                 "--time=600", "--partition=gpu", "--requeue"):
        assert f"#SBATCH {line}\n" in script
    gres = slurm_parameters(_compose_hydra("hydra/launcher=slurm", "hydra.launcher.gres=gpu:a100:4").hydra.launcher)
    assert "gpus_per_node" not in gres and gres["gres"] == "gpu:a100:4"


def test_every_slurm_task_runs_the_same_job_and_only_rank_0_records_it(tmp_path, monkeypatch):
    """A 2-task job: both ranks get the job's config with trainer.devices=2 (the launcher's
    override); the ranks themselves come from SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID."""
    import cloudpickle
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.types import HydraContext
    from hydra._internal.callbacks import Callbacks

    from hydra_plugins.trainforge_launcher._job import SweepJob
    from hydra_plugins.trainforge_launcher.launcher import Entry, SlurmLauncher

    seen = tmp_path / "seen.jsonl"  # the job is a pickled copy: it reports through a file

    def task(cfg):
        with open(seen, "a") as f:
            f.write(json.dumps([cfg.trainer.devices, HydraConfig.get().runtime.output_dir,
                                os.environ["SLURM_PROCID"]]) + "\n")
        return 0.5

    from hydra import initialize_config_dir

    before = Singleton.get_state()  # the job sets Hydra's global state: put it back afterwards
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        from hydra.types import RunMode

        config = loader.load_configuration("train", ["hydra/launcher=slurm", "hydra.launcher.tasks_per_node=2",
                                                     f"hydra.sweep.dir={tmp_path}"], run_mode=RunMode.MULTIRUN)
        launcher = SlurmLauncher(**config.hydra.launcher)
        launcher.setup(hydra_context=HydraContext(config_loader=loader, callbacks=Callbacks()),
                       task_function=task, config=config)
        entry = Entry(3, ["seed=1"], tmp_path / "3")
        job = launcher.job_for(entry, launcher.extra_overrides(entry, None, 2))
    job = cloudpickle.loads(cloudpickle.dumps(job))  # what submitit ships to every task
    try:
        run_ranks(job, tmp_path, monkeypatch)
    finally:
        Singleton.set_state(before)
        GlobalHydra.instance().clear()
    ranks = [json.loads(line) for line in seen.read_text().splitlines()]
    assert ranks == [[2, str(tmp_path / "3"), "1"], [2, str(tmp_path / "3"), "0"]]
    assert "- trainer.devices=2" in (tmp_path / "3/.hydra/overrides.yaml").read_text()


def run_ranks(job, tmp_path, monkeypatch):
    """Run ``job`` as SLURM task 1, then task 0, of a 2-task job."""
    for rank in (1, 0):
        for key, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "77", "SLURM_NTASKS": "2",
                           "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0",
                           "SLURM_JOB_NUM_NODES": "1"}.items():
            monkeypatch.setenv(key, value)
        out = job()
        assert out["status"] == "COMPLETED" and out["value"] == 0.5
        if rank == 1:
            assert not (tmp_path / "3" / ".hydra").exists()  # one record of the composition, by rank 0


def _compose_hydra(*overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
