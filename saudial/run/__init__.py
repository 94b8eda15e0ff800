"""The training run: recipe, trainer, run record, output directory, checkpoints, signals, processes."""
