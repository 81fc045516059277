"""trainforge's Hydra launchers: ``hydra/launcher=local_gpus`` (the default for ``-m``)
and ``hydra/launcher=slurm``, both on submitit. Hydra imports every public module of
this package when it starts, so they stay light (submitit and torch load lazily)."""
