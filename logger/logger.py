"""Logging setup: the console plus a log file in the run's log folder."""
import logging
import logging.config
import os
from pathlib import Path

from utils.errors import UserError
from utils.files import read_json, refuse_link

DEFAULT_CONFIG = Path(__file__).with_name("logger_config.json")  # found from any working dir


def setup_logging(log_dir: str | os.PathLike | None, log_config: str | os.PathLike = DEFAULT_CONFIG,
                  default_level: int = logging.INFO) -> None:
    """Configure the root logger from `log_config`, with file handlers writing into `log_dir`.

    With `log_dir=None` only the handlers that write no file are set up: the console before the
    run folder exists.
    """
    log_config = Path(log_config)
    if not log_config.is_file():
        logging.basicConfig(level=default_level)
        logging.getLogger(__name__).warning("Warning: logging config %s not found; logging to "
                                            "the console only.", log_config)
        return
    config = read_json(log_config)
    handlers = config.get("handlers", {})
    for name, handler in list(handlers.items()):
        if "filename" not in handler:
            continue
        if log_dir is None:
            del handlers[name]
            for logger in [config.get("root", {}), *config.get("loggers", {}).values()]:
                if name in logger.get("handlers", []):
                    logger["handlers"].remove(name)
        else:
            handler["filename"] = str(Path(log_dir) / handler["filename"])
            refuse_link(handler["filename"])  # a log file is appended to: never through a link
    try:
        logging.config.dictConfig(config)
    except ValueError as error:  # a handler's file cannot be opened (permissions, a folder)
        cause = error.__cause__
        if not isinstance(cause, OSError):
            raise
        raise UserError(f"{cause.filename}: cannot open the log file ({cause.strerror})") \
            from None
