"""trainforge: a Hydra-configured PyTorch experiment framework.

Importing the package registers the structured-config schemas with Hydra's ConfigStore
and the ``tf_run_dir`` resolver that ``conf/train.yaml`` uses for ``hydra.run.dir``.
"""
from trainforge import cli as _cli  # noqa: F401  (registers the tf_run_dir resolver)
from trainforge import config as _config  # noqa: F401  (registers the schemas)

__version__ = "0.1.0"
