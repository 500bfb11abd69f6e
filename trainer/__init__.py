"""The user's seam: trainer.trainer.Trainer (training_step, ...) and your own subclasses of it."""
