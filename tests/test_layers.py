"""The layers hold: no module imports from a layer above its own, not even inside a function
(DESIGN.md, "Layout and layers")."""
import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Bottom to top; a module may import from its own layer and those below.
LAYERS = [("utils",), ("logger", "config"), ("base",),
          ("data_loader", "model", "trainer", "examples"), ("parse_config",),
          ("train", "test", "sweep", "new_project")]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}
ENTRY_SCRIPTS = set(LAYERS[-1])
# parse_config.py is generic: what it must know of these is handed in by the entry scripts
NOT_FOR_PARSE_CONFIG = {"base", "trainer", "model", "data_loader"}


def project_modules() -> list[Path]:
    return sorted(path for path in ROOT.rglob("*.py")
                  if path.relative_to(ROOT).parts[0].removesuffix(".py") in LAYER_OF)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in `path`, at the top or inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def layer_violations(path: Path) -> list[str]:
    own = path.relative_to(ROOT).parts[0].removesuffix(".py")
    violations = []
    for line, module in imports_of(path):
        target = module.split(".")[0]
        if target not in LAYER_OF or target == own:
            continue
        wrong = LAYER_OF[target] > LAYER_OF[own] or \
            (own == "parse_config" and target in NOT_FOR_PARSE_CONFIG) or \
            (own in ENTRY_SCRIPTS and target in ENTRY_SCRIPTS)  # scripts share nothing directly
        if wrong:
            violations.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return violations


def test_no_module_imports_from_a_layer_above_it():
    modules = project_modules()
    assert len(modules) > 40  # the walk found the project
    assert [v for path in modules for v in layer_violations(path)] == []


@pytest.mark.parametrize("source, expected", [
    ("def f():\n    from trainer.trainer import Trainer\n", ["imports trainer.trainer"]),
    ("import base.base_trainer\n", ["imports base.base_trainer"]),
    ("from utils.files import read_json\n", []),
])
def test_the_check_sees_imports_anywhere_in_a_lower_module(tmp_path, monkeypatch, source,
                                                           expected):
    (tmp_path / "utils").mkdir()
    module = tmp_path / "utils" / "probe.py"
    module.write_text(source)
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert [v.split(" ", 1)[1] for v in layer_violations(module)] == expected
