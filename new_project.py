"""Start a new project from this template: `python new_project.py ../MyProject`."""
import argparse
import shutil
from pathlib import Path

from utils.cli import run_cli
from utils.errors import UserError

TEMPLATE_DIR = Path(__file__).resolve().parent
# Never copied: version control, run output, caches, downloaded data.
IGNORED = (".git", "saved", "__pycache__", ".pytest_cache", "*.pyc", "*.pth", ".mypy_cache",
           ".ruff_cache", "*.egg-info", "MNIST", "cifar-10-batches-py", "*.tar.gz", ".venv", "venv",
           ".idea", ".vscode", ".benchmarks", ".ipynb_checkpoints", "runs", "wandb")


def copy_template(target: Path) -> None:
    """Copy the template into `target`, which must not exist or be an empty folder."""
    target = target.resolve()
    if target == TEMPLATE_DIR or TEMPLATE_DIR in target.parents:
        raise UserError(f"{target}: the new project cannot be inside the template")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target}: exists and is not an empty folder; choose a new path")
    shutil.copytree(TEMPLATE_DIR, target, ignore=shutil.ignore_patterns(*IGNORED),
                    dirs_exist_ok=True)
    (target / "saved").mkdir()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Copy this template into a new project folder.")
    parser.add_argument("path", type=Path, help="folder of the new project (new or empty)")
    args = parser.parse_args(argv)
    copy_template(args.path)
    print(f"New project created at {args.path.resolve()}")
    print(f"  cd {args.path} && python train.py -c config.json")


if __name__ == "__main__":
    run_cli(main)
