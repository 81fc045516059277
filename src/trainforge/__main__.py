"""The ``trainforge`` command (also ``python -m trainforge``).

    trainforge [overrides]            train: what ``python train.py [overrides]`` does (-m, --cfg, --help, resume=...)
    trainforge analyze DIR [options]  plots and a summary of a run or a sweep directory
    trainforge new NAME [--dir DIR]   a new project of your own (model, data, loss, metric, conf/, a test)
    trainforge eval RUN [ckpt=..]     a run's checkpoint evaluated on a split of its data (RUN/eval/)
    trainforge predict RUN [split=..] the model's output on a split or a file, per sample (RUN/predictions/)
"""
from __future__ import annotations

import sys

def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["analyze"]:
        from trainforge.analysis.analyze import main as analyze

        sys.exit(analyze(argv[1:]))
    if argv[:1] in (["eval"], ["predict"]):
        import importlib

        module = "trainforge.run.evaluate" if argv[0] == "eval" else "trainforge.run.predict"
        sys.exit(importlib.import_module(module).main(argv[1:]))
    if argv[:1] == ["new"]:
        from trainforge.run.new import main as new

        sys.exit(new(argv[1:]))
    from trainforge.cli import train_command

    sys.argv = [sys.argv[0], *argv]
    train_command()


if __name__ == "__main__":
    main()
