import json

import pytest

from tests.conftest import ROOT, run_folders, run_script


@pytest.mark.slow
def test_new_project_copies_the_template_and_trains_on_its_own(tmp_path):
    (ROOT / "saved" / "stray_output.txt").write_text("run output")   # must not be copied
    try:
        result = run_script("new_project.py", str(tmp_path / "MyProject"))
    finally:
        (ROOT / "saved" / "stray_output.txt").unlink()
    project = tmp_path / "MyProject"
    assert "New project created" in result.stdout
    for name in ("train.py", "test.py", "config.json", "parse_config.py", "base", "model",
                 "data/digits.csv.gz", "tests", ".ci/run", "requirements.txt", "README.md"):
        assert (project / name).exists(), name
    assert not (project / ".git").exists()
    assert list((project / "saved").iterdir()) == []
    assert not list(project.rglob("__pycache__"))

    config = json.loads((project / "config.json").read_text())
    config["trainer"].update(epochs=1, tensorboard=False)
    (project / "config.json").write_text(json.dumps(config))
    run = run_script(str(project / "train.py"), "-c", "config.json", cwd=project)
    assert "Saving checkpoint" in run.stdout
    assert len(run_folders(project / "saved")) == 1


@pytest.mark.slow
def test_new_project_refuses_a_non_empty_target(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = run_script("new_project.py", str(tmp_path), check=False)
    assert result.returncode == 2 and "not an empty folder" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.slow
def test_new_project_refuses_a_target_inside_the_template(tmp_path):
    result = run_script("new_project.py", str(ROOT / "saved" / "copy"), check=False)
    assert result.returncode == 2 and not (ROOT / "saved" / "copy").exists()


def test_new_project_leaves_environments_and_run_output_behind(tmp_path, monkeypatch):
    import new_project
    template = tmp_path / "template"
    for name in ("train.py", "model/model.py", ".venv/lib/big.so", "saved/models/x.pth",
                 "runs/events.out", "model/__pycache__/m.pyc", "data/MNIST/raw/x"):
        (template / name).parent.mkdir(parents=True, exist_ok=True)
        (template / name).write_text("x")
    monkeypatch.setattr(new_project, "TEMPLATE_DIR", template)
    new_project.copy_template(tmp_path / "new")
    copied = sorted(p.relative_to(tmp_path / "new").as_posix()
                    for p in (tmp_path / "new").rglob("*") if p.is_file())
    assert copied == ["model/model.py", "train.py"]
    assert (tmp_path / "new" / "saved").is_dir()
