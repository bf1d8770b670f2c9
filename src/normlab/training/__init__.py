"""Training: config, loop, checkpoints, distributed, regularizers."""
