"""The step machinery around the user's training_step: engine, batches, metrics, positions."""
