"""The training engine: loop (trainer), side effects (hooks), precision, checkpoints, logging."""
