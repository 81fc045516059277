"""Entry point: ``python train.py [overrides]``. See README.md.

Kept thin on purpose: sweeps pickle ``main``, so it references nothing but importable
functions (no module-level handles, locks or loggers). The configs are the package's own
(``src/trainforge/conf``); ``--config-dir`` adds a folder of yours.
"""
import hydra

from trainforge.cli import guarded


@hydra.main(config_path="pkg://trainforge.conf", config_name="train", version_base="1.3")
def main(cfg):
    from trainforge.config import validate

    validate(cfg)  # a refused config fails in a second, before torch is imported
    from trainforge.run.train import run

    return run(cfg, validated=True)


if __name__ == "__main__":
    guarded(main)
