"""`manifest.json` in a run folder: how each session of the run was started, and on what.

A run resumed into its own folder adds a session, so the file tells the whole story: the command
lines, the effective configs, seeds, code versions and library versions.
"""
import json
import os
import platform
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from utils import distributed
from utils.files import write_json

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MANIFEST_NAME = "manifest.json"


def session_record(argv: list[str], config: dict, resumed_from: str | None) -> dict[str, Any]:
    """What this process runs with: command line, config, seed, git commit, versions."""
    import torch

    return {
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *argv],
        "cwd": os.getcwd(),
        "resumed_from": resumed_from,
        "seed": config.get("seed", 0),
        "config": config,
        "git": git_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "host": platform.node(),
        "processes": distributed.world_size(),  # under torchrun: the whole run's
    }


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any] | None:
    """The commit the project is checked out at and whether files differ from it; None outside
    a git checkout or without git."""
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "uncommitted_changes": bool(changes.strip())}


def add_session(run_dir: Path, record: dict[str, Any]) -> None:
    """Append `record` to the run folder's manifest (written atomically)."""
    path = run_dir / MANIFEST_NAME
    sessions = []
    if path.is_file():
        try:
            sessions = json.loads(path.read_text(encoding="utf-8")).get("sessions", [])
        except (OSError, ValueError, AttributeError):
            sessions = []  # a damaged manifest is replaced, not a reason to stop training
    write_json({"sessions": [*sessions, record]}, path)
