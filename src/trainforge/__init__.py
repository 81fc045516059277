"""trainforge: a Hydra-configured PyTorch experiment framework.

Importing the package registers the structured-config schemas with Hydra's ConfigStore
and the resolvers that ``conf/train.yaml`` uses (``tf_run_dir``, ...).

Layout, top to bottom (each layer imports only the ones below it; ``tests/test_layout.py``):
``cli`` (the door) > ``run`` (train, build, resume, ranks) > ``analysis`` > ``engine`` >
``data`` > ``models``, ``losses``, ``metrics`` > ``config`` > ``distributed`` > ``files`` > ``errors``.

Modules moved since earlier releases keep their old names (``OLD_NAMES``): saved runs name
classes by import path, and ``python -m trainforge.analyze`` is documented.
"""
import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# old module name -> where it lives now
OLD_NAMES = {
    "trainforge.train": "trainforge.run.train",
    "trainforge.build": "trainforge.run.build",
    "trainforge.resume": "trainforge.run.resume",
    "trainforge.submit": "trainforge.run.submit",
    "trainforge.launch": "trainforge.distributed.launch",
    "trainforge.ranks": "trainforge.distributed.ranks",
    "trainforge.signals": "trainforge.distributed.signals",
    "trainforge.engine.distributed": "trainforge.distributed.group",
    "trainforge.rundir": "trainforge.files",
    "trainforge.rules": "trainforge.config.rules",
    "trainforge.analyze": "trainforge.analysis.analyze",
    "trainforge.plots": "trainforge.analysis.plots",
    "trainforge.sweep": "trainforge.analysis.summary",
    "trainforge.data.seqsets": "trainforge.data.sets",
}


class _OldNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import trainforge.train`` gives the module ``trainforge.run.train`` itself (one
    module object, so classes and isinstance checks agree); ``python -m trainforge.analyze``
    runs the new module's code as ``__main__``."""

    def find_spec(self, name, path=None, target=None):
        if name not in OLD_NAMES:
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        return importlib.import_module(OLD_NAMES[spec.name])

    def exec_module(self, module):
        pass  # the new module ran when it was imported

    def get_code(self, name):  # runpy (python -m OLD_NAME)
        return importlib.util.find_spec(OLD_NAMES[name]).loader.get_code(OLD_NAMES[name])


if not any(isinstance(f, _OldNames) for f in sys.meta_path):
    sys.meta_path.insert(0, _OldNames())

from trainforge import cli as _cli  # noqa: E402,F401  (registers the resolvers)
from trainforge import config as _config  # noqa: E402,F401  (registers the schemas)

API = ("compose", "fit", "load", "Result")  # trainforge.compose, ... (trainforge.run.api; imported on first use)
# and trainforge.evaluate, trainforge.predict (trainforge.run.evaluate, .predict)
# the bases and protocols of your own parts (docs/own-project.md), imported on first use
PARTS = {"Callback": "trainforge.engine.components", "Metric": "trainforge.engine.components",
         "DataSpec": "trainforge.data", "Datasets": "trainforge.data"}


def __getattr__(name):
    if name in API:
        from trainforge.run import api

        return getattr(api, name)
    if name in ("evaluate", "predict"):  # after training (docs/after-training.md)
        return getattr(importlib.import_module(f"trainforge.run.{name}"), name)
    if name in PARTS:
        return getattr(importlib.import_module(PARTS[name]), name)
    raise AttributeError(f"module 'trainforge' has no attribute {name!r}")
