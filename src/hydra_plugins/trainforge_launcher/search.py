"""``hydra/sweeper=search``: an asynchronous Optuna search over the ``local_gpus`` pool.

A new trial is asked the moment a slot frees (no batches); each trial is one trainforge
run in ``SWEEP/<trial number>``, whose objective is the run's own: the best value of
``checkpoint.monitor`` in the direction of ``checkpoint.mode``. Trials report each epoch to
the study and a pruner may end them (COMPLETED, ``stop_reason: pruned``); a trial that
fails or ends without a finite value is a failed trial and the search goes on until
``max_failure_rate`` of ``n_trials`` have failed. The study is Optuna's journal file in the
sweep directory: the same command (same ``hydra.sweep.dir``) continues a stopped search,
finished trials kept and interrupted ones resumed from their checkpoints. Optuna and the
job machinery load only when a search starts (Hydra imports this module at every start).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, List

from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf


class SearchSweeper(Sweeper):
    def __init__(self, **params: Any) -> None:
        self.params = params
        self.config = self.hydra_context = self.launcher = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        from trainforge.errors import ConfigError

        from .launcher import LocalGpusLauncher

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)
        if not isinstance(self.launcher, LocalGpusLauncher) or not self.launcher.ours:
            raise ConfigError("hydra/sweeper=search runs trainforge trials on hydra/launcher=local_gpus (got "
                              f"{type(self.launcher).__name__}); a search on SLURM is not supported yet")

    def sweep(self, arguments: List[str]) -> Any:
        from trainforge.errors import ConfigError

        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ConfigError("hydra/sweeper=search needs Optuna 5: pip install 'trainforge[search]'") from None
        from ._search import Search

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        search = Search(self.launcher, self.params, arguments, sweep_dir, time.time())
        return search.run()
