"""Optional leaf: hyperparameter search (sweep.py, Optuna), k-fold summary, run comparison."""
