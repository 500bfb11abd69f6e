"""The deploy leaf: a trained model put to use (`predict.py`)."""
