"""trainforge: a Hydra-configured PyTorch experiment framework.

Importing the package registers the structured-config schemas with Hydra's ConfigStore.
"""
from trainforge import config as _config  # noqa: F401  (registers the schemas)

__version__ = "0.1.0"
