"""The tracking leaf: a run tracked in MLflow beside TensorBoard (`trainer.mlflow`)."""
