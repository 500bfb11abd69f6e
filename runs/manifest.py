"""`manifest.json` in a run folder: how each session of the run was started, and on what.

A run resumed into its own folder adds a session, so the file tells the whole story: the command
lines, the effective configs, seeds, code versions and library versions.
"""
import json
import logging
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


def add_session(run_dir: Path, log_dir: Path, record: dict[str, Any]) -> None:
    """Append `record` to the run folder's manifest (written atomically), which also binds the
    run's folders to each other: its run id, run folder and log folder. A manifest that cannot
    be read is kept aside (`manifest.json.damaged`), never silently replaced."""
    path = run_dir / MANIFEST_NAME
    manifest = read_manifest(run_dir)
    if manifest is None and path.exists():
        aside = path.with_name(f"{MANIFEST_NAME}.damaged-{datetime.now():%Y%m%d-%H%M%S}")
        os.replace(path, aside)
        logging.getLogger("train").warning("Warning: %s could not be read; kept as %s, and a new "
                                           "manifest started.", path, aside.name)
    sessions = (manifest or {}).get("sessions", [])
    write_json({"run_id": run_dir.name, "run_dir": str(run_dir.resolve()),
                "log_dir": str(Path(log_dir).resolve()), "sessions": [*sessions, record]}, path)


def note_in_session(run_dir: Path, **fields: Any) -> None:
    """Add `fields` to the newest session of the run folder's manifest (this process's)."""
    manifest = read_manifest(run_dir)
    if manifest is None or not manifest["sessions"]:
        return
    manifest["sessions"][-1].update(fields)
    write_json(manifest, run_dir / MANIFEST_NAME)


def read_manifest(run_dir: Path) -> dict | None:
    """The run folder's manifest, or None when it is missing or not one."""
    try:
        manifest = json.loads((run_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sessions"), list):
        return None
    return manifest


def made_here(run_dir: Path) -> bool:
    """Whether `run_dir` is a run folder this template made, where it made it: its manifest
    names this folder. A copy or a moved folder names another; a manifest from before the
    folders were recorded names none, and may be a copy too (whose continuing would write into
    the original's log folder): both are foreign, and a resume branches off into a new run."""
    manifest = read_manifest(run_dir)
    if manifest is None or "run_dir" not in manifest:
        return False
    return manifest["run_dir"] == str(run_dir.resolve()) and manifest.get("run_id") == \
        run_dir.name


def bound_log_dir(run_dir: Path) -> Path | None:
    """The log folder the manifest binds to `run_dir`; None when it records none."""
    manifest = read_manifest(run_dir) or {}
    return Path(manifest["log_dir"]) if isinstance(manifest.get("log_dir"), str) else None


def file_digest(path: Path) -> str:
    """The SHA-256 of a file, read in blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def changed_helper_files(run_dir: Path, helper_files: dict[str, dict]) -> list[str]:
    """One line for each of `helper_files` (name: {"path", "sha256"}) whose content differs
    from what the run folder's newest session that recorded it used."""
    recorded = {}
    for session in (read_manifest(run_dir) or {}).get("sessions") or []:
        if isinstance(session, dict) and isinstance(session.get("helper_files"), dict):
            recorded.update(session["helper_files"])
    lines = []
    for name, now in helper_files.items():
        before = recorded.get(name)
        if isinstance(before, dict) and before.get("sha256") != now["sha256"]:
            lines.append(f"Warning: the helper file {name!r} ({now['path']}) is not the one this "
                         f"run was trained with (SHA-256 {now['sha256'][:12]}..., was "
                         f"{str(before.get('sha256'))[:12]}... from {before.get('path')}).")
    return lines
