"""new_project.py: a new project of the core alone, or with the leaves asked for (`--with`),
that trains and passes its own tests."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_folders, run_script

# What a page of a copy without any leaf must not say (but the maintainer's map, docs/DESIGN.md,
# which is not marked: tests/test_docs.py).
LEAF_WORDS = re.compile(r"search/|sweep\.py|examples/|bench/|search-and-kfold|--folds|--compare|"
                        r"--trial\b|--with[ =][\w,]*(?:search|bench|examples|deploy|tracking)|"
                        r"examples\.|predict\.py|export\.py|deploy/|tracking/|<!-- /?leaf")
# What each leaf brings, as found in a copy (new_project.LEAVES has the patterns).
LEAF_FILES = {"search": ["search", "sweep.py", "tests/search", "configs/search_digits.json"],
              "bench": ["bench", "tests/bench"],
              "examples": ["examples", "tests/examples", "data/diabetes.csv.gz"],
              "deploy": ["deploy", "predict.py", "export.py", "tests/deploy"],
              "tracking": ["tracking", "tests/tracking"]}


def run_in(project: Path, *command: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python *command` run in `project` as its user runs it: nothing of this template on the
    path (PYTHONPATH dropped), so a leaf the copy lacks cannot be imported from here."""
    env = {key: value for key, value in os.environ.items()
           if key != "PYTHONPATH" and not key.startswith("PYTEST_")}
    return subprocess.run([sys.executable, *command], cwd=project, capture_output=True,
                          text=True, timeout=timeout, env={**env, "PYTHONHASHSEED": "0"})


def requirement_names(project: Path) -> list[str]:
    return [line.split(">")[0].split("=")[0].strip().lower()
            for line in (project / "requirements.txt").read_text().splitlines() if line.strip()]


def copy_with(tmp_path: Path, leaf: str) -> Path:
    """A new project of the core and `leaf`, with every file the leaf brings."""
    project = tmp_path / "MyProject"
    result = run_script("new_project.py", str(project), "--with", leaf)
    assert f"(core + {leaf})" in result.stdout
    for name in LEAF_FILES[leaf]:
        assert (project / name).exists(), name
    return project


def one_epoch_config(project: Path) -> None:
    config = json.loads((project / "config.json").read_text())
    config["trainer"].update(epochs=1, tensorboard=False)
    (project / "config.json").write_text(json.dumps(config))


@pytest.mark.slow
def test_the_core_alone_passes_its_fast_tests_and_trains(tmp_path):
    (ROOT / "saved" / "stray_output.txt").write_text("run output")   # must not be copied
    try:
        result = run_script("new_project.py", str(tmp_path / "MyProject"))
    finally:
        (ROOT / "saved" / "stray_output.txt").unlink()
    project = tmp_path / "MyProject"
    assert "New project created" in result.stdout
    for name in ("train.py", "test.py", "config.json", "parse_config.py", "new_project.py",
                 "base", "step", "runs/run_folder.py", "builder", "config", "logger", "utils",
                 "model", "data_loader", "trainer/trainer.py", "data/digits.csv.gz", "configs",
                 "tests/conftest.py", "docs/DESIGN.md", ".ci/run", "requirements.txt",
                 "README.md", "pytest.ini", ".gitignore"):
        assert (project / name).exists(), name
    assert (project / "pyproject.toml").exists() == (ROOT / "pyproject.toml").exists()
    present = [name for names in LEAF_FILES.values() for name in names
               if (project / name).exists()] + [p.name for p in project.glob("docs/*search*")]
    assert present == []
    assert "torch" in requirement_names(project) and "optuna" not in requirement_names(project)
    assert not (project / ".git").exists()
    assert list((project / "saved").iterdir()) == []
    assert not list(project.rglob("__pycache__"))
    said = {page.name: LEAF_WORDS.findall(page.read_text())
            for page in [project / "README.md", *project.glob("docs/*.md")]}
    assert [name for name, found in said.items() if found and name != "DESIGN.md"] == [], said

    tests = run_in(project, "-m", "pytest", "-q", "-x", "-rA", "-m", "not slow",
                   "-p", "no:cacheprovider")
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-3000:]
    for check in ("link", "json", "project_path", "command", "leaf_marker"):  # its docs, strictly
        assert f"PASSED tests/test_docs.py::test_every_page_passes[{check}_problems]" in \
            tests.stdout, tests.stdout[-3000:]
    assert not (project / ".pytest_cache").exists()

    one_epoch_config(project)
    run = run_in(project, "train.py", "-c", "config.json")
    assert run.returncode == 0, run.stderr[-3000:]
    folder, = run_folders(project / "saved")
    assert (folder / "checkpoint-epoch1.pth").exists() and (folder / "model_best.pth").exists()

    folds = run_in(project, "train.py", "-c", "config.json", "--folds", "2")
    assert folds.returncode == 2 and folds.stderr.count("\n") == 1, folds.stderr
    assert folds.stderr.startswith("error: --folds needs the package search/")


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "sweep.py").exists(), reason="made without the search leaf")
def test_with_search_the_copy_sweeps(tmp_path):
    project = copy_with(tmp_path, "search")
    assert not (project / "bench").exists() and not (project / "examples").exists()
    assert "optuna" in requirement_names(project)

    help_text = run_in(project, "sweep.py", "--help")
    assert help_text.returncode == 0 and "--trials TRIALS" in help_text.stdout
    (project / "space.json").write_text(json.dumps({"optimizer.args.lr": {"choice": [0.01]}}))
    one_epoch_config(project)
    sweep = run_in(project, "sweep.py", "-c", "config.json", "-s", "space.json", "--trials", "1",
                   "-o", "trainer.len_epoch=2")
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    assert (project / "saved/sweeps/Digits_CNN-space/best_config.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "predict.py").exists(), reason="made without the deploy leaf")
def test_with_deploy_the_copy_trains_predicts_and_exports(tmp_path):
    project = copy_with(tmp_path, "deploy")
    assert not (project / "search").exists()
    one_epoch_config(project)
    trained = run_in(project, "train.py", "-c", "config.json", "--run-id", "r")
    assert trained.returncode == 0, trained.stderr[-3000:]
    predicted = run_in(project, "predict.py", "-r", "saved/models/Digits_CNN/r/model_best.pth")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    lines = (project / "saved/models/Digits_CNN/r/model_best.predictions.csv").read_text()
    assert len(lines.splitlines()) == 360  # the header and the test split's 359 digits
    exported = run_in(project, "export.py", "-r", "saved/models/Digits_CNN/r/model_best.pth")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (project / "saved/models/Digits_CNN/r/model_best.pt2").exists()


def test_new_project_refuses_an_unknown_leaf_in_one_line_and_writes_nothing(tmp_path):
    result = run_script("new_project.py", str(tmp_path / "MyProject"), "--with", "bench,serch",
                        check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: --with: unknown leaf 'serch' (did you mean 'search'?); the leaves are bench, "
        "deploy, examples, search, tracking"]
    assert list(tmp_path.iterdir()) == []


def test_new_project_refuses_a_non_empty_target(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = run_script("new_project.py", str(tmp_path), check=False)
    assert result.returncode == 2 and "not an empty folder" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_new_project_refuses_a_target_inside_the_template(tmp_path):
    result = run_script("new_project.py", str(ROOT / "saved" / "copy"), check=False)
    assert result.returncode == 2 and not (ROOT / "saved" / "copy").exists()


def fake_template(folder: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("x")
    return folder


def copied_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_new_project_leaves_environments_and_run_output_behind(tmp_path, monkeypatch):
    import new_project
    template = fake_template(tmp_path / "template", (
        "train.py", "model/model.py", ".venv/lib/big.so", "saved/models/x.pth",
        "runs/run_folder.py", "runs/events.out.tfevents.1.host", "model/__pycache__/m.pyc",
        "data/MNIST/raw/x"))
    monkeypatch.setattr(new_project, "TEMPLATE_DIR", template)
    new_project.copy_template(tmp_path / "new")
    assert copied_files(tmp_path / "new") == ["model/model.py", "runs/run_folder.py", "train.py"]
    assert (tmp_path / "new" / "saved").is_dir()


def test_the_leaves_asked_for_are_copied_with_their_configs_and_requirements(tmp_path,
                                                                           monkeypatch):
    import new_project
    template = fake_template(tmp_path / "template", (
        "train.py", "search/study.py", "sweep.py", "tests/search/test_sweep.py",
        "tests/test_train.py", "configs/search_digits.json", "docs/searching.md",
        "docs/DESIGN.md", "bench/throughput.py", "tests/bench/test_bench.py",
        "examples/vae.py", "data/diabetes.csv.gz", "data/digits.csv.gz"))
    (template / "configs/vae.json").write_text(json.dumps(
        {"arch": {"type": "examples.vae.VAE"}, "trainer": {"type": "examples.vae.Trainer"}}))
    (template / "configs/mnist.json").write_text(json.dumps({"arch": {"type": "MnistModel"}}))
    (template / "requirements.txt").write_text("torch>=2.4\n# search\nOptuna >= 4.0\ntqdm\n")
    monkeypatch.setattr(new_project, "TEMPLATE_DIR", template)

    new_project.copy_template(tmp_path / "core")
    assert copied_files(tmp_path / "core") == [
        "configs/mnist.json", "data/digits.csv.gz", "docs/DESIGN.md", "requirements.txt",
        "tests/test_train.py", "train.py"]
    assert (tmp_path / "core/requirements.txt").read_text() == "torch>=2.4\n# search\ntqdm\n"

    new_project.copy_template(tmp_path / "more", ["search", "examples"])
    assert set(copied_files(tmp_path / "more")) == set(copied_files(tmp_path / "core")) | {
        "search/study.py", "sweep.py", "tests/search/test_sweep.py",
        "configs/search_digits.json", "docs/searching.md", "examples/vae.py",
        "configs/vae.json", "data/diabetes.csv.gz"}
    assert (tmp_path / "more/requirements.txt").read_text() == (template / "requirements.txt"
                                                                ).read_text()


def test_a_leaf_this_template_was_made_without_is_refused(tmp_path, monkeypatch):
    import new_project
    from utils.errors import UserError

    monkeypatch.setattr(new_project, "TEMPLATE_DIR",
                        fake_template(tmp_path / "template", ("train.py", "bench/run.py")))
    assert new_project.parse_leaves("bench, bench,") == ["bench"]
    with pytest.raises(UserError, match=r"^--with: this project was made without the leaf "
                                        r"search \(its search/ is missing\)$"):
        new_project.parse_leaves("bench,search")
    with pytest.raises(UserError, match=r"unknown leaf 'exampels' \(did you mean 'examples'\?\)"):
        new_project.parse_leaves("exampels")


PAGE = """# A page
Core text.
<!-- leaf: search -->
Run `sweep.py`.
<!-- leaf: examples -->
`--with search,examples`
<!-- /leaf: examples -->
<!-- /leaf: search -->
| script | leaf |
| --- | --- |
| `bench/throughput.py` | bench | <!-- leaf: bench -->
| `train.py` | none |
More core text.
"""


def test_strip_leaves_drops_the_marked_lines_of_the_leaves_left_out():
    from new_project import strip_leaves

    lines = PAGE.splitlines(keepends=True)
    assert strip_leaves(PAGE, []) == PAGE  # in the template the markers stay
    assert strip_leaves(PAGE, ["examples"]) == "".join(lines[:4] + lines[7:])
    assert strip_leaves(PAGE, {"search"}) == "".join(lines[:2] + lines[8:])
    assert strip_leaves(PAGE, {"search", "bench", "examples"}) == \
        "# A page\nCore text.\n| script | leaf |\n| --- | --- |\n| `train.py` | none |\n" \
        "More core text.\n"
    for page, error in [("<!-- leaf: serch -->\nx\n<!-- /leaf: serch -->\n", "no leaf 'serch'"),
                        ("| a | <!-- leaf: serch -->\n", "no leaf 'serch'"),
                        ("<!-- leaf: search -->\nx\n<!-- /leaf: bench -->\n",
                         "line 3: <!-- /leaf: bench --> closes no open block of bench"),
                        ("x\n<!-- /leaf: bench -->\n", "closes no open block"),
                        ("<!-- leaf: search -->\nx\n", "<!-- leaf: search --> is never closed")]:
        with pytest.raises(ValueError, match=re.escape(error)):
            strip_leaves(page, ["bench"])


def test_the_copys_pages_say_nothing_of_the_leaves_left_out(tmp_path, monkeypatch):
    import new_project
    from utils.errors import UserError

    template = fake_template(tmp_path / "template", ("train.py", "search/study.py"))
    for page in ("README.md", "docs/a-page.md", "docs/search-page.md"):
        (template / page).parent.mkdir(exist_ok=True)
        (template / page).write_text(PAGE)
    (template / "data").mkdir()
    (template / "data" / "notes.md").write_text(PAGE)  # not a page: copied as it is
    monkeypatch.setattr(new_project, "TEMPLATE_DIR", template)
    monkeypatch.setitem(new_project.LEAVES, "search", new_project.Leaf(("search", "docs/search-*")))

    new_project.copy_template(tmp_path / "core")
    core = new_project.strip_leaves(PAGE, new_project.LEAVES)
    assert [(tmp_path / "core" / page).read_text() for page in ("README.md", "docs/a-page.md")] == \
        [core, core]
    assert not (tmp_path / "core/docs/search-page.md").exists()
    assert (tmp_path / "core/data/notes.md").read_text() == PAGE

    new_project.copy_template(tmp_path / "more", ["search"])
    assert (tmp_path / "more/README.md").read_text() == \
        new_project.strip_leaves(PAGE, ["bench", "examples"])
    assert (tmp_path / "more/docs/search-page.md").read_text() == \
        new_project.strip_leaves(PAGE, ["bench", "examples"])

    (template / "docs/a-page.md").write_text("<!-- leaf: search -->\nnever closed\n")
    with pytest.raises(UserError, match=r"^docs/a-page.md: <!-- leaf: search --> is never closed$"):
        new_project.copy_template(tmp_path / "broken")
    assert not (tmp_path / "broken").exists()  # checked before anything is written
