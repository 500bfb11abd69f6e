"""Start a new project from this template: `python new_project.py ../MyProject`, the core
alone, or `python new_project.py ../MyProject --with search,bench` with optional leaves."""
import argparse
import difflib
import fnmatch
import json
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from utils.cli import run_cli
from utils.errors import UserError

TEMPLATE_DIR = Path(__file__).resolve().parent
# Never copied: version control, run output, caches, downloaded data, TensorBoard's default
# output (its event files: `runs/` is the core's room for run folders and checkpoints).
IGNORED = (".git", "saved", "__pycache__", ".pytest_cache", "*.pyc", "*.pth", ".mypy_cache",
           ".ruff_cache", "*.egg-info", "MNIST", "cifar-10-batches-py", "*.tar.gz", ".venv", "venv",
           ".idea", ".vscode", ".benchmarks", ".ipynb_checkpoints", "events.out.tfevents.*",
           "wandb", "comparison.json")


@dataclass(frozen=True)
class Leaf:
    """An optional part of the template (docs/DESIGN.md, "Layout"): the core never imports it,
    so a project made without it trains and passes its tests.

    `paths`: glob patterns, relative to the template, of its files and folders;
    `requirements`: the packages of requirements.txt that only it needs. A config in configs/
    whose `type` names one of its modules (`"examples.vae.VAE"`) goes with it too."""
    paths: tuple[str, ...]
    requirements: tuple[str, ...] = ()


LEAVES = {
    "search": Leaf(("search", "sweep.py", "tests/search", "configs/search_*.json",
                    "docs/*search*", "docs/sweep_history.png"), requirements=("optuna", "matplotlib")),
    "bench": Leaf(("bench", "tests/bench")),
    "deploy": Leaf(("deploy", "predict.py", "export.py", "tests/deploy", "docs/*deploy*")),
    "tracking": Leaf(("tracking", "tests/tracking", "docs/*tracking*", "docs/mlflow_runs.png")),
    "examples": Leaf(("examples", "tests/examples", "data/diabetes.csv.gz")),
}


def parse_leaves(text: str) -> list[str]:
    """The leaf names of a comma-separated `--with` value; a `UserError` in one line naming
    every unknown one (with the nearest known name), or every one this template lacks."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in LEAVES]
    if unknown:
        guesses = [f"'{name}'" + "".join(f" (did you mean '{guess}'?)" for guess in
                                         difflib.get_close_matches(name, LEAVES, n=1))
                   for name in unknown]
        raise UserError(f"--with: unknown leaf {', '.join(guesses)}; the leaves are "
                        f"{', '.join(sorted(LEAVES))}")
    missing = [name for name in names if not (TEMPLATE_DIR / LEAVES[name].paths[0]).exists()]
    if missing:  # this template is itself a project made without them
        raise UserError(f"--with: this project was made without the leaf {', '.join(missing)} "
                        f"(its {', '.join(LEAVES[name].paths[0] + '/' for name in missing)} "
                        f"is missing)")
    return list(dict.fromkeys(names))


def names_a_module_of(config: object, package: str) -> bool:
    """Whether any `type` in the parsed JSON `config` is a dotted path into `package`."""
    if isinstance(config, dict):
        kind = config.get("type")
        if isinstance(kind, str) and kind.startswith(f"{package}."):
            return True
        return any(names_a_module_of(value, package) for value in config.values())
    if isinstance(config, list):
        return any(names_a_module_of(value, package) for value in config)
    return False


def leaf_paths(name: str, template: Path) -> list[str]:
    """Glob patterns, relative to `template`, of everything that goes with the leaf `name`:
    its own paths and the configs in configs/ that name its modules."""
    paths = list(LEAVES[name].paths)
    for config in sorted((template / "configs").glob("*.json")):
        try:
            parsed = json.loads(config.read_text())
        except (OSError, ValueError):  # not a config this check can read: it stays in the core
            continue
        if names_a_module_of(parsed, name):
            paths.append(config.relative_to(template).as_posix())
    return paths


def ignore_function(left_out: list[str]):
    """A `shutil.copytree` ignore function for IGNORED and the `left_out` glob patterns
    (paths relative to TEMPLATE_DIR)."""
    ignore_patterns = shutil.ignore_patterns(*IGNORED)

    def ignore(folder: str, names: list[str]) -> set[str]:
        relative = Path(folder).relative_to(TEMPLATE_DIR)
        return set(ignore_patterns(folder, names)) | {
            name for name in names
            if any(fnmatch.fnmatchcase((relative / name).as_posix(), pattern)
                   for pattern in left_out)}
    return ignore


def requirement_name(line: str) -> str | None:
    """The normalized package name a requirements.txt line names (PEP 503), or None."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#")[0])
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else None


def write_requirements(target: Path, left_out: set[str]) -> None:
    """The template's requirements.txt in `target` without the packages of `left_out` leaves."""
    source = TEMPLATE_DIR / "requirements.txt"
    if not source.exists():
        return
    dropped = {requirement_name(package) for leaf in left_out
               for package in LEAVES[leaf].requirements}
    lines = [line for line in source.read_text().splitlines(keepends=True)
             if requirement_name(line) not in dropped]
    (target / "requirements.txt").write_text("".join(lines))


# What README.md and docs/*.md say of a leaf is marked with HTML comments, which GitHub does not
# show: a block between the lines `<!-- leaf: NAME -->` and `<!-- /leaf: NAME -->` (blocks nest:
# a line about two leaves is in both), or one line ending in `<!-- leaf: NAME -->` (a table row,
# which a comment line of its own would end). tests/test_docs.py checks that every reference to a
# leaf is marked so.
LEAF_BLOCK = re.compile(r"<!-- (?P<end>/?)leaf: (?P<name>[\w-]+) -->")
LEAF_ROW = re.compile(r"\S.*<!-- leaf: (?P<name>[\w-]+) -->\s*$")


def strip_leaves(text: str, left_out: Iterable[str]) -> str:
    """A page's `text` without what it marks as of a leaf in `left_out`, markers included; the
    markers of the other leaves stay. A `ValueError` for a marker that names no leaf, or a block
    that is closed wrongly or never."""
    left_out, kept, open_blocks = set(left_out), [], []
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        block = LEAF_BLOCK.fullmatch(line.strip())
        marker = block or LEAF_ROW.search(line)
        name = marker["name"] if marker else None
        if marker and name not in LEAVES:
            raise ValueError(f"line {number}: {line.strip()}: no leaf {name!r} (the leaves are "
                             f"{', '.join(sorted(LEAVES))})")
        if block and not block["end"]:
            open_blocks.append(name)
        if not left_out & {*open_blocks, *([name] if marker else [])}:
            kept.append(line)
        if block and block["end"] and (not open_blocks or open_blocks.pop() != name):
            raise ValueError(f"line {number}: {line.strip()} closes no open block of {name}")
    if open_blocks:
        raise ValueError(f"<!-- leaf: {open_blocks[-1]} --> is never closed")
    return "".join(kept)


def stripped_pages(left_out: set[str]) -> dict[str, str]:
    """README.md and docs/*.md of the template (by relative path) without what they say of the
    `left_out` leaves."""
    pages = {}
    for page in [TEMPLATE_DIR / "README.md", *sorted((TEMPLATE_DIR / "docs").glob("*.md"))]:
        if page.is_file():
            relative = page.relative_to(TEMPLATE_DIR).as_posix()
            try:
                pages[relative] = strip_leaves(page.read_text(), left_out)
            except ValueError as error:
                raise UserError(f"{relative}: {error}") from None
    return pages


def copy_template(target: Path, leaves: Iterable[str] = ()) -> None:
    """Copy the core of the template and the named `leaves` into `target`, which must not exist
    or be an empty folder."""
    target = target.resolve()
    if target == TEMPLATE_DIR or TEMPLATE_DIR in target.parents:
        raise UserError(f"{target}: the new project cannot be inside the template")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target}: exists and is not an empty folder; choose a new path")
    left_out = set(LEAVES) - set(leaves)
    patterns = [path for leaf in sorted(left_out) for path in leaf_paths(leaf, TEMPLATE_DIR)]
    pages = stripped_pages(left_out)  # before anything is written: a wrong marker writes nothing
    shutil.copytree(TEMPLATE_DIR, target, ignore=ignore_function(patterns), dirs_exist_ok=True)
    write_requirements(target, left_out)
    for page, text in pages.items():
        if (target / page).is_file():
            (target / page).write_text(text)
    (target / "saved").mkdir()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Copy this template into a new project folder: "
                                                 "the core, and the optional leaves asked for.")
    parser.add_argument("path", type=Path, help="folder of the new project (new or empty)")
    parser.add_argument("--with", dest="leaves", default="", metavar="LEAF[,LEAF]",
                        help=f"optional leaves to add: {', '.join(sorted(LEAVES))}")
    args = parser.parse_args(argv)
    leaves = parse_leaves(args.leaves)
    copy_template(args.path, leaves)
    print(f"New project created at {args.path.resolve()}"
          f" ({' + '.join(['core', *leaves])})")
    print(f"  cd {args.path} && python train.py -c config.json")


if __name__ == "__main__":
    run_cli(main)
