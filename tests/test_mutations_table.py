"""tools/mutations stays usable: every patch applies to today's src/, and every test it names
as its catcher exists (the runner itself, which runs them, is run by hand: minutes)."""
from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess

import pytest

from conftest import ROOT

HERE = ROOT / "tools" / "mutations"


def catchers() -> dict:
    spec = importlib.util.spec_from_file_location("mutations_run", HERE / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CATCHERS


def test_every_patch_has_catchers_that_exist():
    table = catchers()
    assert sorted(table) == sorted(p.stem for p in HERE.glob("*.patch"))
    for name, tests in table.items():
        assert tests, name
        for test in tests:
            path, _, func = test.partition("::")
            names = {n.name for n in ast.walk(ast.parse((ROOT / path).read_text())) if isinstance(n, ast.FunctionDef)}
            assert func.split("[")[0] in names, f"{name}: {test} does not exist"


@pytest.mark.skipif(shutil.which("patch") is None, reason="needs the patch program")
def test_every_patch_applies_to_todays_source(tmp_path):
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    failed = []
    for patch in sorted(HERE.glob("*.patch")):
        proc = subprocess.run(["patch", "-p1", "-s", "--dry-run", "-d", str(tmp_path), "-i", str(patch)],
                              capture_output=True, text=True)
        if proc.returncode:
            failed.append(f"{patch.stem}: {proc.stdout.strip() or proc.stderr.strip()}")
    assert not failed, "\n".join(failed)
