"""``python train.py [overrides]``: the same as the ``trainforge`` command, from a checkout.

Kept thin on purpose: the task function lives in ``trainforge.cli`` (a sweep pickles it
by name), the configs in the package (``src/trainforge/conf``).
"""
from trainforge.cli import train_command

if __name__ == "__main__":
    train_command()
