"""What each Ray Train worker runs: the worker, the LightningModule, its callbacks and checkpoints."""
