"""The concrete trainer: the user's seam (`trainer.trainer.Trainer`: training_step,
validation_step, to_device, batch_size), the step machinery that calls it (`driver`), and the
pieces that machinery uses (batches, metrics, NaN guard, precision, evaluation, watch)."""
