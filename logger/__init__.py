"""What a run shows: logging, TensorBoard, progress, training and test reports, model summary."""
from logger.logger import setup_logging
from logger.visualization import TensorboardWriter

__all__ = ["TensorboardWriter", "setup_logging"]
