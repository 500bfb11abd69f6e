"""The layers hold (docs/DESIGN.md, "Layers and the rule that tests them"): no module imports
from a layer above its own, not even inside a function or by string; the core never imports
the user's modules or a leaf; the user's modules import only the public surface."""
import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Bottom to top; a module may import from its own layer and those below.
LAYERS = [("utils",), ("logger", "config"), ("base", "step", "runs", "builder"),
          ("parse_config",), ("data_loader", "model", "trainer", "examples"),
          ("search", "deploy", "tracking"),
          ("train", "test", "sweep", "predict", "export", "new_project"), ("bench",)]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}
CORE = {"utils", "logger", "config", "base", "step", "runs", "builder", "parse_config"}
USER_ROOMS = {"data_loader", "model", "trainer", "examples"}
LEAVES = {"search", "bench", "examples", "deploy", "tracking"}
ENTRY_SCRIPTS = {"train", "test", "sweep", "predict", "export", "new_project"}
# What the user's modules may import of the template: the classes they subclass and the error
# they raise. trainer/trainer.py defines `Trainer` itself, on the step machinery.
PUBLIC = {"base", "base.base_model", "base.base_data_loader", "base.callbacks",
          "trainer.trainer", "utils.errors"}
SEAM_FILE = "trainer/trainer.py"
# parse_config.py is generic: what it must know of the rest is handed in by the entry scripts
NOT_FOR_PARSE_CONFIG = {"base", "step", "runs", "builder"}
# Calls whose first argument, a string, names a module they import.
IMPORTING_CALLS = {"import_module", "optional_leaf", "__import__"}


def project_modules() -> list[Path]:
    return sorted(path for path in ROOT.rglob("*.py")
                  if path.relative_to(ROOT).parts[0].removesuffix(".py") in LAYER_OF)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in `path`, at the top or inside a function, and of every
    module named by string to `import_module` / `optional_leaf`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and \
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            function = node.func.attr if isinstance(node.func, ast.Attribute) else \
                getattr(node.func, "id", "")
            if function in IMPORTING_CALLS:
                found.append((node.lineno, node.args[0].value))
    return found


def layer_violations(path: Path) -> list[str]:
    relative = path.relative_to(ROOT)
    own = relative.parts[0].removesuffix(".py")
    violations = []
    for line, module in imports_of(path):
        target = module.split(".")[0]
        if target not in LAYER_OF or target == own:
            continue
        wrong = LAYER_OF[target] > LAYER_OF[own] or \
            (own in CORE and target in LEAVES | USER_ROOMS) or \
            (own == "parse_config" and target in NOT_FOR_PARSE_CONFIG) or \
            (own in USER_ROOMS and target not in USER_ROOMS and module not in PUBLIC and
             relative.as_posix() != SEAM_FILE) or \
            (own in ENTRY_SCRIPTS and target in ENTRY_SCRIPTS and target != "train")
        if wrong:
            violations.append(f"{relative}:{line} imports {module}")
    return violations


def test_no_module_imports_from_a_layer_above_it():
    modules = project_modules()
    assert len(modules) > 40  # the walk found the project
    assert [v for path in modules for v in layer_violations(path)] == []


def test_the_rule_is_the_one_docs_design_states():
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    assert "tests/test_layers.py" in design
    for room in ("step/", "runs/", "builder/", "search/", "trainer/trainer.py"):
        assert room in design


@pytest.mark.parametrize("room, source, expected", [
    ("utils", "def f():\n    from trainer.trainer import Trainer\n", ["imports trainer.trainer"]),
    ("utils", "import base.base_trainer\n", ["imports base.base_trainer"]),
    ("utils", "from utils.files import read_json\n", []),
    # the core never imports the user's modules or a leaf, not even by string
    ("builder", "import importlib\nimportlib.import_module('model.model')\n",
     ["imports model.model"]),
    ("step", "from importlib import import_module\nimport_module('search.study')\n",
     ["imports search.study"]),
    # the user's modules import the public surface only
    ("model", "from base import BaseModel\nfrom utils.errors import UserError\n", []),
    ("model", "from config.names import resolve_type\n", ["imports config.names"]),
    ("examples", "from step.engine import StepEngine\n", ["imports step.engine"]),
    # an entry script may use train.py's, not another's
    ("sweep", "from train import blocks\n", []),
    ("train", "import sweep\n", ["imports sweep"]),
])
def test_the_check_sees_imports_anywhere(tmp_path, monkeypatch, room, source, expected):
    folder = tmp_path / room if room not in ENTRY_SCRIPTS else tmp_path
    folder.mkdir(exist_ok=True)
    module = folder / ("probe.py" if room not in ENTRY_SCRIPTS else f"{room}.py")
    module.write_text(source)
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert [v.split(" ", 1)[1] for v in layer_violations(module)] == expected


def test_the_config_system_names_no_user_package_or_leaf():
    """A config's dotted `type` reaches the user's packages only as the entry script names
    them (train.USER_PACKAGES): the core's allow-list is libraries alone."""
    import train
    from config import names

    train.user_modules()  # the entry script names the user's packages
    libraries = {name.split(".")[0] for name in (*names.LIBRARY_MODULES, *names.LIBRARY_PACKAGES)}
    assert libraries == {"torch", "torchvision", "torchmetrics"}
    assert "examples" in names.allowed_modules() or not (ROOT / "examples").is_dir()
