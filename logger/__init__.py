"""What a run shows: logging setup (`logger`, `logger_config.json`), the TensorBoard writer
(`visualization`), progress bars and epoch tables (`progress`), and test.py's report
(`report`)."""
from logger.logger import setup_logging
from logger.visualization import TensorboardWriter

__all__ = ["TensorboardWriter", "setup_logging"]
