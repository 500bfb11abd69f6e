"""Generic helpers importing nothing above them: files, checkpoints, seeding, signals, errors."""
