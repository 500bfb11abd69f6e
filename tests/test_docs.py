"""The docs hold together: docs/render_curves.py draws the TensorBoard picture from a real run's
events, and every page (README.md, docs/*.md) has links that resolve, JSON that parses, project
paths that exist and command lines that the scripts accept.

The conventions of the pages, which these tests read:

- A fenced block tagged ```json is one JSON value. Tagged ```json fragment, it is the members of
  an object (`"arch": {...}, "optimizer": {...}`), which parse once wrapped in braces; GitHub
  highlights it as JSON all the same. Tagged ```jsonc, it is JSON with `//` notes (an annotated
  config), which parses once the notes are removed. README's first ```jsonc block is config.json.
- A span in backticks is a path of this project when it looks like a path and ends in `.py`, or
  when it holds a `/` and its first part is a top-level file or folder of the project — except
  run output under `saved/`. A dotted name in backticks (`utils.errors.ConfigError`) is a name of
  this project when its first part is one of its packages or top-level modules; `model`,
  `trainer` and `data_loader` are also everyday names and config sections (`trainer.epochs`,
  `model.apply`), so for those the second part must be a module (`trainer.trainer.Trainer`).
- A command line is `python SCRIPT ...` or `torchrun ... SCRIPT ...` in a fenced block or a span
  in backticks, or a span that starts with `SCRIPT` (`test.py --compare`), for the entry scripts
  (train.py, test.py, sweep.py, new_project.py). Its flags are those of the parser the script's
  main() builds.
- A project made by `new_project.py` without a leaf has no pages, paths or scripts of that leaf;
  what a page says of a missing leaf is not checked there.
"""
import argparse
import ast
import fnmatch
import functools
import importlib.util
import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from tests.conftest import ROOT, run_folders, small_config

SCRIPTS = ("train.py", "test.py", "sweep.py", "new_project.py")
LAUNCHERS = ("python", "python3", "torchrun")
SHELL_SEPARATORS = {"&&", "||", ";", "|", ">", ">>", "2>", "<", "&"}
FILE_SUFFIXES = {"py", "json", "jsonc", "md", "txt", "ini", "pth", "log", "db", "gz", "csv", "png",
                 "tmp"}
EVERYDAY_PACKAGES = {"model", "trainer", "data_loader"}  # also config sections and variable names
PATH_SPAN = re.compile(r"(?:\./)?[\w.-]+(?:/[\w.-]+)*/?")
DOTTED_SPAN = re.compile(r"[a-z_]\w*(?:\.[A-Za-z_]\w*)+")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[(?:[^\]\n]|\n(?!\n))*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)((?:.|\n(?!\n))+?)(?<!`)\1(?!`)")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass
class Block:
    """A fenced code block: its info string (`json fragment`), text and first line."""
    info: str
    text: str
    line: int


def fenced_blocks(text: str) -> list[Block]:
    blocks, fence, info, body, start = [], None, "", [], 0
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence, info, body, start = match.group(1), match.group(2).strip(), [], number + 1
        elif fence is not None and match and match.group(1)[0] == fence[0] and \
                len(match.group(1)) >= len(fence) and not match.group(2).strip():
            blocks.append(Block(info, "\n".join(body), start))
            fence = None
        elif fence is not None:
            body.append(line)
    return blocks


def prose(text: str) -> str:
    """`text` with its fenced blocks blanked out, line for line."""
    lines, fence = text.splitlines(), None
    for index, line in enumerate(lines):
        match = FENCE.match(line)
        if fence is None and match:
            fence, lines[index] = match.group(1), ""
        elif fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = None
            lines[index] = ""
    return "\n".join(lines)


def line_of(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def where(page: Path, line: int) -> str:
    return f"{page.relative_to(ROOT).as_posix() if page.is_relative_to(ROOT) else page}:{line}"


def code_spans(text: str) -> list[tuple[str, int]]:
    """(content, line) of every span in backticks outside fenced blocks."""
    text = prose(text)
    return [(" ".join(match.group(2).split()), line_of(text, match.start()))
            for match in CODE_SPAN.finditer(text)]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    found, seen = set(), {}
    for line in prose(text).splitlines():
        match = HEADING.match(line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


@functools.cache
def missing_leaf_patterns() -> tuple[str, ...]:
    """Glob patterns (relative to ROOT) of the leaves this copy of the template lacks."""
    spec = importlib.util.spec_from_file_location("_docs_new_project", ROOT / "new_project.py")
    new_project = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(new_project)
    return tuple(pattern for name, leaf in new_project.LEAVES.items()
                 if not (ROOT / leaf.paths[0]).exists()
                 for pattern in new_project.leaf_paths(name, ROOT))


def in_missing_leaf(relative: str) -> bool:
    parts = PurePosixPath(relative).parts
    return any(fnmatch.fnmatchcase("/".join(parts[:end]), pattern)
               for pattern in missing_leaf_patterns() for end in range(1, len(parts) + 1))


# ---------------------------------------------------------------- the checks, each on one page
# Each returns (how many things it checked, the problems it found).

def link_problems(page: Path, text: str) -> tuple[int, list[str]]:
    """Every relative link resolves to a file, and its #anchor to a heading of that page."""
    checked, problems, body = 0, [], prose(text)
    for match in LINK.finditer(body):
        target = match.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        file = (page.parent / path_part).resolve() if path_part else page
        if file.is_relative_to(ROOT) and in_missing_leaf(file.relative_to(ROOT).as_posix()):
            continue
        checked += 1
        at = where(page, line_of(body, match.start()))
        if not file.exists():
            problems.append(f"{at}: link to {target}: no such file")
        elif anchor and file.suffix == ".md":
            headings = anchors(text if file == page else file.read_text())
            if anchor not in headings:
                problems.append(f"{at}: link to {target}: no heading #{anchor} there")
    return checked, problems


def strip_line_comments(source: str) -> str:
    """JSON text without its `//` notes (outside strings)."""
    out, in_string, escaped, index = [], False, False, 0
    while index < len(source):
        char = source[index]
        if in_string:
            in_string = char != '"' or escaped
            escaped = char == "\\" and not escaped
        elif char == '"':
            in_string = True
        elif source.startswith("//", index):
            index = source.find("\n", index)
            if index < 0:
                break
            continue
        out.append(char)
        index += 1
    return "".join(out)


def json_problems(page: Path, text: str) -> tuple[int, list[str]]:
    """Every ```json block parses (a `fragment` once wrapped in braces, ```jsonc without //)."""
    checked, problems = 0, []
    for block in fenced_blocks(text):
        words = block.info.split()
        if not words or words[0] not in ("json", "jsonc"):
            continue
        source = strip_line_comments(block.text) if words[0] == "jsonc" else block.text
        if "fragment" in words[1:]:
            source = "{" + source + "}"
        checked += 1
        try:
            json.loads(source)
        except ValueError as error:
            problems.append(f"{where(page, block.line)}: ```{block.info} block: {error}")
    return checked, problems


def module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for file in (base.with_name(base.name + ".py"), base / "__init__.py"):
        if file.is_file():
            return file
    return None


def top_level_names(file: Path) -> set[str]:
    names = set()
    for node in ast.parse(file.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {target.id for target in targets if isinstance(target, ast.Name)}
    return names


def path_problem(span: str) -> tuple[bool, str | None]:
    """Whether `span` is a project path to check, and the problem with it."""
    if not PATH_SPAN.fullmatch(span):
        return False, None
    relative = span.removeprefix("./").rstrip("/")
    first = relative.split("/")[0]
    if not (relative.endswith(".py") or ("/" in span and (ROOT / first).exists())) or \
            (first == "saved" and relative != "saved") or in_missing_leaf(relative):
        return False, None
    if not (ROOT / relative).exists() or (span.endswith("/") and not (ROOT / relative).is_dir()):
        return True, f"`{span}`: no such file or folder in the project"
    return True, None


def dotted_problem(span: str) -> tuple[bool, str | None]:
    """Whether `span` is a dotted name of the project to check, and the problem with it."""
    parts = span.split(".")
    if not DOTTED_SPAN.fullmatch(span) or parts[-1] in FILE_SUFFIXES or \
            module_file(parts[:1]) is None or \
            (parts[0] in EVERYDAY_PACKAGES and module_file(parts[:2]) is None):
        return False, None
    end = max(end for end in range(1, len(parts) + 1) if module_file(parts[:end]))
    file = module_file(parts[:end])  # the longest prefix that is a module
    if in_missing_leaf(file.relative_to(ROOT).as_posix()):
        return False, None
    if end < len(parts) and parts[end] not in top_level_names(file):
        return True, f"`{span}`: {file.relative_to(ROOT).as_posix()} defines no {parts[end]!r}"
    return True, None


def project_path_problems(page: Path, text: str) -> tuple[int, list[str]]:
    """Every project path and dotted project name in backticks exists."""
    checked, problems = 0, []
    for span, line in code_spans(text):
        for check in (path_problem, dotted_problem):
            counted, problem = check(span)
            checked += counted
            if problem:
                problems.append(f"{where(page, line)}: {problem}")
    return checked, problems


class ParserBuilt(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__("parser built")
        self.parser = parser


@functools.cache
def script_flags(script: str) -> frozenset[str]:
    """The option strings of the parser `script`'s main() builds (its --help's option list)."""
    spec = importlib.util.spec_from_file_location(f"_docs_{script[:-3]}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def stop_at_parse(parser, args=None, namespace=None):
        raise ParserBuilt(parser)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", stop_at_parse)
        with pytest.raises(ParserBuilt) as built:
            module.main([])
    flags = set()
    for line in built.value.parser.format_help().splitlines():
        if re.match(r"  -", line):  # an option's own line; its help is indented further
            invocations = re.split(r"\s{2,}", line.strip())[0]
            flags |= {part.split()[0] for part in invocations.split(", ")}
    return frozenset(flags)


def logical_lines(block: str) -> list[tuple[str, int]]:
    """The lines of a code block, `\\`-continued lines joined; (line, offset of its first)."""
    joined, start, current = [], 0, ""
    for offset, line in enumerate(block.splitlines()):
        if not current:
            start = offset
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        joined.append((current + line, start))
        current = ""
    if current:
        joined.append((current, start))
    return joined


def commands_in(line: str, bare: bool) -> list[tuple[str, list[str]]]:
    """(script, arguments) of each entry-script command in a shell line; `bare`: a span that
    may start with the script's name."""
    try:
        tokens = shlex.split(line)
    except ValueError:  # an unbalanced quote in printed output
        tokens = line.split()
    found = []
    for index, token in enumerate(tokens):
        if PurePosixPath(token).name not in SCRIPTS:
            continue
        since_separator = tokens[:index]
        for back in range(index - 1, -1, -1):
            if tokens[back] in SHELL_SEPARATORS:
                since_separator = tokens[back + 1:index]
                break
        launched = bool(since_separator) and (since_separator[-1] in LAUNCHERS[:2] or
                                              "torchrun" in since_separator)
        if not (launched or (bare and index == 0)):
            continue
        arguments = []
        for argument in tokens[index + 1:]:
            if argument in SHELL_SEPARATORS or argument.startswith("#"):
                break
            arguments.append(argument)
        found.append((PurePosixPath(token).name, arguments))
    return found


def command_problems(page: Path, text: str) -> tuple[int, list[str]]:
    """Every entry-script command in a code block or span uses only its parser's flags."""
    lines = [(line, block.line + offset) for block in fenced_blocks(text)
             for line, offset in logical_lines(block.text)]
    candidates = [(line, number, False) for line, number in lines] + \
                 [(span, number, True) for span, number in code_spans(text)]
    checked, problems = 0, []
    for line, number, bare in candidates:
        for script, arguments in commands_in(line, bare):
            if in_missing_leaf(script):
                continue
            if not (ROOT / script).exists():
                problems.append(f"{where(page, number)}: {script}: no such script")
                continue
            checked += 1
            flags = script_flags(script)
            for argument in arguments:
                if argument.startswith("-") and argument != "-" and \
                        not re.match(r"-\d", argument) and argument.split("=")[0] not in flags:
                    problems.append(f"{where(page, number)}: {script} has no option "
                                    f"{argument.split('=')[0]} (it has {', '.join(sorted(flags))})")
    return checked, problems


CHECKS = [link_problems, json_problems, project_path_problems, command_problems]


# ---------------------------------------------------------------- the pages

@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_every_page_passes(check):
    checked, problems = 0, []
    for page in pages():
        counted, found = check(page, page.read_text())
        checked, problems = checked + counted, problems + found
    assert not problems, "\n".join(problems)
    assert checked > 0, f"{check.__name__} found nothing to check: the pages or the check changed"


def test_the_readme_is_a_page_a_newcomer_finishes():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move a subject to docs/"


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    linked = {(ROOT / match.group(1).partition("#")[0]).resolve()
              for match in LINK.finditer(prose(readme))}
    unlinked = [page.name for page in pages()[1:] if page.resolve() not in linked]
    assert not unlinked, f"docs pages not linked from README.md: {unlinked}"


def test_the_readmes_annotated_config_is_config_json():
    readme = (ROOT / "README.md").read_text()
    annotated = next(block for block in fenced_blocks(readme) if block.info.split()[:1] == ["jsonc"])
    assert json.loads(strip_line_comments(annotated.text)) == \
        json.loads((ROOT / "config.json").read_text())


# ---------------------------------------------------------------- each check fails on a broken page

# (a page with faults, how many, the same page without them)
BROKEN = {
    link_problems: ("[gone](no-such-page.md), [no heading](checkpoints.md#no-such-heading), "
                    "[no folder](../no_such_room/)", 3,
                    "[fine](checkpoints.md), [fine](checkpoints.md#written-atomically), "
                    "[web](https://pytorch.org), ![picture](tensorboard.png)"),
    json_problems: ('```json\n{"epochs": 3,}\n```\n```json fragment\n"a": 1, ...\n```\n'
                    '```jsonc\n{"a": 1 // a note\n"b": 2}\n```', 3,
                    '```json\n{"epochs": 3}\n```\n```json fragment\n"a": 1, "b": [2]\n```\n'
                    '```jsonc\n{"a": "http://x", // a note\n"b": 2}\n```'),
    project_path_problems: ("`base/no_such_file.py`, `no_such_script.py`, `runs/nothing/`, "
                            "`utils.errors.NoSuchError`, `trainer.trainer.NoSuchTrainer`", 5,
                            "`base/settings.py`, `train.py`, `runs/`, `utils.errors.ConfigError`, "
                            "`trainer.trainer.Trainer`, `trainer.epochs`, `saved/models/x.pth`"),
    command_problems: ("```bash\npython train.py -c config.json --no-such-flag\n"
                       "torchrun --nproc_per_node=2 train.py --learning-rate 0.1\n```\n"
                       "and `test.py -r x.pth --jsn out.json`", 3,
                       "```bash\npython train.py -c config.json --lr 0.01 -o a.b=1 --lr -1\n"
                       "torchrun --standalone --nproc_per_node=2 train.py -r run  # --nothing\n```\n"
                       "and `test.py -r x.pth --compare a b --json out.json`"),
}
PAGE = ROOT / "docs" / "a-page.md"  # never written: the checks are given its text


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_each_check_finds_the_faults_of_a_broken_page(check):
    broken, faults, fixed = BROKEN[check]
    assert len(check(PAGE, broken)[1]) == faults, check(PAGE, broken)[1]
    checked, problems = check(PAGE, fixed)
    assert problems == [] and checked > 0


def test_what_belongs_to_a_missing_leaf_is_not_checked(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "missing_leaf_patterns",
                        lambda: ("search", "sweep.py", "docs/*search*"))
    page = ("[search](search-and-nowhere.md) `search/no_such_file.py` `search.nothing.Sweep`\n"
            "```bash\npython sweep.py --no-such-flag\n```")
    assert [check(PAGE, page)[1] for check in CHECKS] == [[], [], [], []]
    assert link_problems(PAGE, "[step](no-step-here.md)")[1]  # the core is checked still


# ---------------------------------------------------------------- the picture

@pytest.mark.slow
def test_render_curves_draws_the_loss_and_accuracy_cards(tmp_path):
    from PIL import Image

    import train

    config = small_config(tmp_path / "saved", epochs=2, tensorboard=True)
    (tmp_path / "c.json").write_text(json.dumps(config))
    train.main(["-c", str(tmp_path / "c.json")])
    run, = run_folders(tmp_path / "saved")
    spec = importlib.util.spec_from_file_location("render_curves", ROOT / "docs" / "render_curves.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    render.main(str(tmp_path / "saved" / "log" / "Digits_CNN" / run.name), str(tmp_path / "tb.png"))
    image = Image.open(tmp_path / "tb.png").convert("RGB")
    assert image.size == (2 * render.CARD_W + 30, render.CARD_H + 20)
    colours = {colour for _, colour in image.getcolors(maxcolors=1 << 20)}
    assert {render.COLOURS["train"], render.COLOURS["valid"]} <= colours  # both curves drawn
