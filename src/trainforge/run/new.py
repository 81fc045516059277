"""``trainforge new NAME``: a small, complete project of your own that trains at once.

    NAME/
      README.md
      NAME/{__init__,model,data,loss,metric}.py   the parts (plain PyTorch)
      conf/experiment/NAME.yaml                   wires them: trainforge experiment=NAME
      tests/test_NAME.py                          one epoch through the Python API
"""
from __future__ import annotations

import importlib.util
import keyword
import os
import shutil
import tempfile
from pathlib import Path

from trainforge.errors import ConfigError

TEMPLATE = Path(__file__).with_name("template")
TOKEN = "__NAME__"


def check_name(name: str, where: Path) -> None:
    """NAME must make a Python package that nothing else answers to, in a folder not yet there."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ConfigError(f"new {name}: NAME must be a Python identifier (letters, digits, _; not a keyword), "
                          "e.g. ecg_net; it names the folder and the package")
    if where.exists() or where.is_symlink():
        raise ConfigError(f"new {name}: {where} already exists; nothing was written")
    if importlib.util.find_spec(name) is not None:
        raise ConfigError(f"new {name}: a module {name} can already be imported here (it would shadow it or be "
                          "shadowed); choose another name")


def render(name: str, target: Path) -> list:
    """The template's files under ``target``, NAME put in paths and text."""
    written = []
    for source in sorted(TEMPLATE.rglob("*.tmpl")):
        rel = source.relative_to(TEMPLATE).with_suffix("")  # drop .tmpl
        parts = [name if p == "package" else p.replace(TOKEN, name) for p in rel.parts]
        path = target.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source.read_text().replace(TOKEN, name))
        written.append(path.relative_to(target))
    return written


def new_project(name: str, parent: Path | str = ".") -> Path:
    """Write the project ``parent/name``: all of it or, on any error, nothing."""
    parent = Path(parent).expanduser().resolve()
    where = parent / name
    check_name(name, where)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=parent))
    try:
        render(name, staging)
        os.rename(staging, where)  # one step: a half-written project is never seen
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return where


def main(argv) -> int:
    """``trainforge new NAME [--dir PARENT]``; one line and exit 2 on a refused name."""
    import argparse

    parser = argparse.ArgumentParser(prog="trainforge new", description="Write a new trainforge project NAME/.")
    parser.add_argument("name", help="the project's name: a Python identifier (the folder and the package)")
    parser.add_argument("--dir", default=".", help="where to put NAME/ (default: here)")
    args = parser.parse_args(argv)
    try:
        where = new_project(args.name, args.dir)
    except (ConfigError, OSError) as e:
        print(f"trainforge: error: {e}", file=__import__("sys").stderr)
        return 2
    print(f"Wrote {where}. Train it:\n  cd {os.path.relpath(where)} && trainforge experiment={args.name}\n"
          f"Test it:\n  cd {os.path.relpath(where)} && python -m pytest tests")
    return 0
