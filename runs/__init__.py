"""Run folders and checkpoints: the folder and its lock, the manifest, saving, the best epoch, resume."""
