"""Every command the README and docs/ show is run by a test.

``HOW`` says, for each command as the docs write it, who runs it:
- ``here``: ``test_a_documented_command_runs`` below, as a subprocess in a scratch
  directory, as written but with the placeholders filled (a run directory, a sweep, a
  project of your own) and a few overrides appended that make it small;
- a test id: that test runs the same command (it asserts the figure the docs quote);
- ``gpu``, ``slurm``, ``valgrind``: skipped where the machine has none (and said so);
- ``ci``: ``.ci/run`` runs it on every submission (the install and the suite itself).

A command added to the docs fails ``test_every_documented_command_has_a_runner`` until it
gets a line here.
"""
from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SMALL

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
STARTS = ("python ", "python3 ", "torchrun ", "srun ", "bash ", "pytest ", "pip ", "trainforge ")

QUICK = [*SMALL, "trainer.epochs=1"]  # glint, small
HERE = "here"
EV = "tests/test_evaluate.py"
PR = "tests/test_predict.py"

HOW = {
    # install and the suite itself
    'pip install -e ".[dev]"': "ci",
    "python -m pytest": "ci",
    "python -m pytest -m slow": "ci",
    "bash .ci/run": "ci",
    # the trainforge command
    "trainforge": HERE,
    "trainforge scheduler=cosine log.interval=20": HERE,
    "trainforge experiment=digits": HERE,
    "trainforge trainer.devices=2": HERE,
    "trainforge --help": HERE,
    "trainforge --cfg job": HERE,
    "trainforge -m loss=focal,hybrid optimizer.lr=1e-3,3e-3": HERE,
    "trainforge -m hydra/launcher=slurm hydra.launcher.partition=gpu loss=focal,hybrid": "slurm",
    "trainforge analyze multirun/2026-12-04/16-01-10_654321": HERE,
    "trainforge analyze outputs/2026-12-04/15-36-14_123456 --batch_metrics": HERE,
    "trainforge resume=outputs/2026-12-04/15-36-14_123456": HERE,
    "trainforge resume=RUN/checkpoints/checkpoint_epoch_005.pth": HERE,
    "trainforge hydra.run.dir=RUN resume=auto": HERE,
    "trainforge --config-dir my_project/conf model=my_net": HERE,
    "trainforge --config-dir my_project/conf experiment=myexp": HERE,
    # your own project: docs/own-project.md's walkthrough, run in order by one test
    **dict.fromkeys([
        "trainforge new my_project", "trainforge experiment=my_project hydra.run.dir=runs/first",
        "trainforge experiment=my_project model.channels=32 trainer.epochs=10",
        "trainforge experiment=my_project "
        "'metrics.f1={_target_:torchmetrics.classification.MulticlassF1Score,num_classes:2}'",
        "trainforge -m experiment=my_project optimizer.lr=1e-3,3e-3", "trainforge resume=runs/first trainer.epochs=8",
        "python -m pytest tests"], "tests/test_own_project.py::test_the_walkthrough_of_the_docs_page_runs"),
    # training
    "python train.py": "tests/test_train_cli.py::test_default_experiment_reaches_dice_0_8",
    "python train.py scheduler=cosine log.interval=20": HERE,
    "python train.py experiment=digits": "tests/test_data.py::test_digits_experiment_reaches_97_percent",
    "python train.py experiment=seqset": "tests/test_data.py::test_seqset_experiment_reaches_95_percent",
    "python train.py experiment=seqsetvae": "tests/test_seqsetvae.py::test_default_seqsetvae_run_under_two_minutes_with_auroc_0_8_and_its_finetune_0_9",
    "python train.py experiment=seqsetvae_finetune model.init_weights=RUN/best_model_weights.pt": HERE,
    "python train.py model.init_weights=RUN/best_model_weights.pt": HERE,
    "python train.py --help": HERE,
    "python train.py --cfg job": HERE,
    # resume
    "python train.py resume=PATH": HERE,
    # DDP
    "python train.py trainer.devices=2": HERE,
    "python train.py trainer.devices=2 data.batch_size=8": HERE,
    "python train.py trainer.devices=auto": HERE,
    "torchrun --nproc_per_node=2 train.py data.batch_size=8": HERE,
    "torchrun --nproc_per_node=2 train.py ...": HERE,
    "torchrun --nproc_per_node=1 train.py": HERE,
    "srun --ntasks=2 python train.py data.batch_size=8": "slurm",
    # sweeps
    "python train.py -m loss=focal,hybrid": HERE,
    "python train.py -m experiment=seqsetvae loss.beta=0.05,4.0": "tests/test_seqsetvae.py::test_sweep_over_beta_flags_the_collapsed_job",
    "python train.py -m hydra/launcher=slurm hydra.launcher.partition=gpu loss=focal,hybrid": "slurm",
    # analysis
    "python -m trainforge.analyze DIR [--batch_metrics]": HERE,
    "python -m trainforge.analyze outputs/2026-11-26/21-58-03_123456 --batch_metrics": HERE,
    "python -m trainforge.analyze multirun/2026-11-26/22-01-10_654321": HERE,
    # measured figures
    "pytest -m slow tests/test_train_cli.py -k default_experiment": HERE,
    "pytest -m slow tests/test_data.py -k digits": HERE,
    "pytest -m slow tests/test_data.py -k seqset_experiment": HERE,
    "pytest -m slow tests/test_seqsetvae.py -k finetune": HERE,
    "pytest -m slow tests/test_optimization.py -k accum -s": HERE,
    "python benchmarks/bench_shared_memory.py --json docs/benchmarks/shared_memory_cpu.json": HERE,
    "python benchmarks/bench_overhead.py --device cpu --clock cpu --threads 1 --rounds 15 --control --json "
    "docs/benchmarks/overhead_cpu.jsonl": "tests/test_perf.py::test_bench_overhead_prints_one_line_per_case_with_its_stable_keys",
    "python benchmarks/bench_sweep.py": HERE,
    "python benchmarks/bench_dry_batch.py --json docs/benchmarks/dry_batch_cpu.json": HERE,
    "python benchmarks/bench_ema.py --rounds 9 --steps 20 --json docs/benchmarks/ema_cpu.json": HERE,
    "python benchmarks/bench_sharded_val.py --rounds 7 --json docs/benchmarks/sharded_val_cpu.json": HERE,
    # docs/search.md
    "trainforge -m hydra/sweeper=search 'optimizer.lr=tag(log, interval(1e-4, 1e-1))' 'model.base_channels=choice(8,16)'":
        HERE,
    "trainforge -m hydra/sweeper=search experiment=digits 'optimizer.lr=tag(log, interval(3e-4, 3e-2))' "
    "'optimizer.weight_decay=tag(log, interval(1e-6, 1e-2))' 'model.channels=choice(16,32,48)' "
    "hydra.sweeper.n_trials=16 hydra.sweeper.seed=0":
        "tests/test_search.py::test_the_worked_search_matches_the_digits_preset_and_pruning_saves_epochs",
    "python benchmarks/bench_search.py --json docs/benchmarks/search_cpu.json":
        "tests/test_search.py::test_bench_search_prints_its_figures",
    # docs/tracking.md
    "trainforge experiment=digits log.mlflow=true": HERE,
    "trainforge -m loss=focal,hybrid log.mlflow=true": HERE,
    "python benchmarks/bench_mlflow.py --rounds 5 --epochs 4 --json docs/benchmarks/mlflow_cpu.json":
        "tests/test_mlflow.py::test_bench_mlflow_prints_its_figures",
    "trainforge analyze --sync multirun/2026-12-06/10-00-00":
        "tests/test_slurm_sweep.py::test_a_slurm_sweep_records_its_code_and_forwards_each_jobs_mlflow_run",
    # docs/after-training.md
    "trainforge eval RUN": f"{EV}::test_eval_of_best_latest_and_an_epoch_gives_the_values_training_recorded",
    "trainforge eval RUN ckpt=latest": f"{EV}::test_eval_of_best_latest_and_an_epoch_gives_the_values_training_recorded",
    "trainforge eval RUN ckpt=epoch:5 data.batch_size=64": HERE,
    "trainforge eval RUN split=test": f"{EV}::test_plain_datasets_are_evaluated_on_their_test_set",
    "trainforge eval MULTIRUN_DIR": f"{EV}::test_eval_of_a_sweep_adds_the_columns_to_its_summary",
    "trainforge eval RUN trainer.devices=2":
        "tests/test_own_project.py::test_one_two_and_three_ranks_validate_evaluate_and_predict_every_sample_once",
    "trainforge predict RUN": f"{PR}::test_class_predictions_of_the_best_checkpoint_give_its_recorded_accuracy",
    "trainforge predict RUN split=test out=test.h5": HERE,
    "trainforge predict RUN input=new_scans.h5": f"{PR}::test_dense_predictions_go_to_hdf5_for_a_split_or_a_file",
    # docs/training-extras.md
    "trainforge experiment=digits trainer.early_stop.patience=3": HERE,
    "trainforge trainer.ema.decay=0.999": HERE,
    "trainforge trainer.ema.decay=0.999 trainer.ema.validate_with=both": HERE,
    "trainforge resume=RUN trainer.devices=2": HERE,
    "python benchmarks/count_host_instructions.py": "valgrind",
    "python benchmarks/count_host_instructions.py --case CASE --json docs/benchmarks/instructions_cpu.jsonl": "valgrind",
    "python benchmarks/bench_precision.py --json docs/benchmarks/precision_gpu.json": "gpu",
    "python benchmarks/bench_overhead.py --rounds 5 --json docs/benchmarks/overhead_gpu_h200.jsonl": "gpu",
    "python benchmarks/bench_compile.py --out docs/benchmarks/compile_gpu_h200.json": "gpu",
    "python benchmarks/bench_sweep.py --gpu": "gpu",
}


def documented_commands() -> dict:
    """command -> the pages that show it: lines of ```bash blocks, and backticked table cells."""
    found: dict = {}
    for page in DOCS:
        text = page.read_text()
        lines = [ln.split("  #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)
                 for ln in block.splitlines()]
        cells = re.findall(r"^\| `([^`]+)`", text, re.M) + re.findall(r"^\|[^|]*\| `([^`]+)`", text, re.M)
        for command in [*lines, *cells]:
            if command.startswith(STARTS) or command == "trainforge":
                found.setdefault(command.strip(), []).append(page.name)
    return found


def test_every_documented_command_has_a_runner():
    found = documented_commands()
    missing = sorted(set(found) - set(HOW))
    assert not missing, f"commands in the docs with no test (add them to HOW): {missing}"
    stale = sorted(set(HOW) - set(found))
    assert not stale, f"HOW names commands no page shows any more: {stale}"


def test_the_named_tests_exist_and_ci_runs_the_rest():
    for command, how in HOW.items():
        if "::" in how:
            path, name = how.split("::")
            names = {n.name for n in ast.walk(ast.parse((ROOT / path).read_text())) if isinstance(n, ast.FunctionDef)}
            assert name in names, f"{command}: {how} does not exist"
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[dev]"' in ci and "pytest" in ci and '-m "slow or not slow"' in ci


# ---- the ones run here ------------------------------------------------------------------
@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("doc_commands")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ, TRAINFORGE_DATA_DIR=str(tmp_path_factory.mktemp("data")), PYTHONUNBUFFERED="1")
    e.pop("HYDRA_FULL_ERROR", None)
    return e


def run(argv, cwd, env, timeout=600):
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def made_run(scratch, env):
    """A finished glint run of 5 epochs with batch metrics (what RUN stands for)."""
    path = scratch / "run"
    run([sys.executable, str(ROOT / "train.py"), *SMALL, "trainer.epochs=5", "log.batch_metrics=true",
         f"hydra.run.dir={path}"], scratch, env)
    return path


@pytest.fixture(scope="module")
def made_sweep(scratch, env):
    path = scratch / "sweep"
    run([sys.executable, str(ROOT / "train.py"), "-m", *QUICK, "loss=focal,dice", f"hydra.sweep.dir={path}"],
        scratch, env)
    return path


@pytest.fixture(scope="module")
def made_vae(scratch, env):
    path = scratch / "vae"
    run([sys.executable, str(ROOT / "train.py"), "experiment=seqsetvae", "data.num_patients=120", "trainer.epochs=1",
         "log.progress=false", f"hydra.run.dir={path}"], scratch, env)
    return path


def my_project(scratch) -> Path:
    """A project of the user's own (tests/test_command.py's): a model module, conf/model/my_net.yaml
    and conf/experiment/myexp.yaml."""
    from test_command import user_project

    root = scratch / "my_project"
    return root if root.exists() else user_project(root)


def concrete(command: str, request) -> tuple:
    """(argv, extra environment) of ``command`` with its placeholders filled, made small."""
    scratch = request.getfixturevalue("scratch")
    extra_env = {}
    text = command.replace(" [--batch_metrics]", " --batch_metrics")
    shrink = list(QUICK)
    if "multirun/" in text:
        text = re.sub(r"multirun/\S+", str(request.getfixturevalue("made_sweep")), text)
    if "experiment=seqsetvae_finetune" in text:
        text = text.replace("RUN", str(request.getfixturevalue("made_vae")))
        shrink = ["data.num_patients=120", "trainer.epochs=1", "log.progress=false"]
    run_dir = request.getfixturevalue("made_run") if re.search(r"outputs/|RUN|DIR|PATH", text) else None
    if run_dir is not None and "resume=" in text:  # each resume continues its own copy of the run
        run_dir = shutil.copytree(run_dir, scratch / f"resumed_{re.sub(r'[^A-Za-z0-9]+', '_', command)[-40:]}")
        shrink = ["trainer.epochs=6"]  # the run had 5: one more
    for placeholder in ("outputs/2026-12-04/15-36-14_123456", "outputs/2026-11-26/21-58-03_123456", "RUN", "DIR",
                        "PATH"):
        text = text.replace(placeholder, str(run_dir))
    if "my_project/conf" in text:
        project = my_project(scratch)
        text = text.replace("my_project/conf", str(project / "conf"))
        extra_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project), os.environ.get("PYTHONPATH")]))
    if "experiment=digits" in text:
        shrink = ["trainer.epochs=1", "log.progress=false"]
    if "experiment=seqset" in text and "seqsetvae" not in text:
        shrink = ["data.num_patients=64", "trainer.epochs=1", "log.progress=false"]
    if "data.batch_size=8" in text:
        shrink = [s for s in shrink if not s.startswith("data.batch_size")]
    argv = shlex.split(text.replace("...", " ".join(QUICK)))
    argv = [str(ROOT / a) if a == "train.py" or a.startswith("benchmarks/") else a for a in argv]
    if argv[0] == "trainforge":
        argv[:1] = [shutil.which("trainforge")] if shutil.which("trainforge") else [sys.executable, "-m", "trainforge"]
    if argv[0] == "python":
        argv[0] = sys.executable
    if argv[0] == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    if argv[0] == "pytest":
        return [sys.executable, "-m", "pytest", *argv[1:], "-q", "-n", "0", "--co"], extra_env
    if "hydra/sweeper=search" in text:
        shrink = [*shrink, "hydra.sweeper.n_trials=3"]
    if _training_in(argv) and not {"--help", "--cfg"} & set(argv) and "..." not in command:
        argv += shrink
    if argv[1:2] == ["-m"] and argv[2:3] == ["trainforge.analyze"]:
        pass
    elif "bench_shared_memory" in text:
        argv = [*argv[:2], "--procs", "2", "--samples", "200", "--size", "16",
                "--json", str(scratch / "shared.json")]
    elif "bench_sweep" in text:
        argv += ["--epochs", "1"]
    elif "bench_dry_batch" in text:
        argv = [*argv[:2], "--rounds", "1", "--json", str(scratch / "dry.json")]
    elif "bench_sharded_val" in text:
        argv = [*argv[:2], "--rounds", "1", "--json", str(scratch / "sharded.json"), *QUICK]
    elif "bench_ema" in text:
        argv = [*argv[:2], "--rounds", "1", "--steps", "2", "--json", str(scratch / "ema.json")]
    return argv, extra_env


def _training_in(argv) -> bool:
    """Whether ``argv`` trains: train.py, or the trainforge command but for its analyze."""
    command = [a for a in argv if not a.startswith("-") or a == "-m"]
    by_name = any(Path(a).name == "trainforge" for a in argv[:1]) or argv[1:3] == ["-m", "trainforge"]
    return any(a.endswith("train.py") for a in argv) or (by_name and not {"analyze", "eval", "predict"} & set(command[1:4]))


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(c for c, how in HOW.items() if how == HERE))
def test_a_documented_command_runs(command, request, scratch, env):
    argv, extra_env = concrete(command, request)
    if _training_in(argv) and " -m " not in f" {command} " and not {"--help", "--cfg"} & set(argv) and \
            "hydra.run.dir=" not in " ".join(argv) and "resume=" not in " ".join(argv):
        argv.append(f"hydra.run.dir={scratch / re.sub(r'[^A-Za-z0-9]+', '_', command)[:60]}")
    if " -m " in command and _training_in(argv):
        argv.append(f"hydra.sweep.dir={scratch / ('sweep_' + re.sub(r'[^A-Za-z0-9]+', '_', command)[:50])}")
    cwd = ROOT if argv[1:3] == ["-m", "pytest"] else scratch
    proc = run(argv, cwd, {**env, **extra_env})
    if "--help" in argv:
        assert "trainforge" in proc.stdout
    elif "--cfg" in argv:
        assert "trainer:" in proc.stdout
    elif argv[1:3] == ["-m", "pytest"]:
        assert re.search(r"\b[1-9]\d* tests? collected|^\S+::\S+", proc.stdout, re.M), proc.stdout[-500:]
    elif "trainforge.analyze" in argv or "analyze" in argv:
        assert "Wrote" in proc.stdout or "Plots" in proc.stdout
    elif "predict" in argv[1:3]:
        assert "Predicted 256 samples of test" in proc.stdout and (scratch / "test.h5").is_file(), proc.stdout
    elif "eval" in argv[1:3]:
        assert "Evaluated" in proc.stdout and "(ckpt=epoch:5: epoch 5, raw weights)" in proc.stdout, proc.stdout
    elif _training_in(argv) and " -m " not in command:
        assert "Done in" in proc.stderr + proc.stdout
