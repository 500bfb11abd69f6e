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
  in backticks, or a span that starts with `SCRIPT` (`test.py --print-config`), for the entry
  scripts (train.py, test.py, sweep.py, new_project.py). Its flags are those of the parser the
  script's main() builds.
- What a page says of a leaf (search, bench, examples: new_project.LEAVES) is marked with HTML
  comments, which GitHub does not show: a block between the lines `<!-- leaf: NAME -->` and
  `<!-- /leaf: NAME -->` (blocks nest: a line about two leaves is in both), or a table row ending
  in `<!-- leaf: NAME -->` (a comment line of its own would end the table). A sentence that only
  makes sense with the leaf goes inside, and the text around reads well without it. A comment
  inside a fenced block would show, so a leaf's code lines get a fenced block of their own
  between the marker lines. `new_project.py` drops the blocks of the leaves it leaves out (the
  markers of the others stay), so a copy's pages never name a leaf it lacks. A reference to a
  leaf, which must be marked: a path under one of its paths (relative to the project or to the
  page: `search/`, `sweep.py`, `../examples/vae.py`, `search-and-kfold.md`), a dotted name in
  its package (`examples.vae.VAETrainer`), `--with NAME`, and its flags (LEAF_FLAGS). A leaf's
  own page (docs/search-and-kfold.md) needs no markers for that leaf. The maintainer's map,
  docs/DESIGN.md, names the leaves as parts of the design and is not marked: in a copy, what it
  says of a missing leaf is not checked.
"""
import argparse
import ast
import fnmatch
import functools
import importlib.util
import json
import posixpath
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


# ---------------------------------------------------------------- the leaves

# The flags an entry script has only with a leaf, and that leaf.
LEAF_FLAGS = {"--folds": "search", "--trial": "search", "--compare": "search"}
UNMARKED_PAGES = ("docs/DESIGN.md",)  # the maintainer's map: the leaves are part of its design
MARKER_LIKE = re.compile(r"<!--\s*/?\s*leaf\b")
PATH_TOKEN = re.compile(r"[\w.-]*(?:/[\w.-]*)+|[\w.-]+\.(?:py|md|json|gz)(?![\w.])")
DOTTED_TOKEN = re.compile(r"(?<![\w./-])([a-z_]\w*)\.[A-Za-z_]\w*")
FLAG_TOKEN = re.compile(r"(?<![\w-])--[a-z][\w-]*")
WITH_TOKEN = re.compile(r"--with[= ]+([\w,-]+)")


@functools.cache
def new_project():
    """This copy's new_project.py (its LEAVES, leaf_paths, strip_leaves)."""
    spec = importlib.util.spec_from_file_location("_docs_new_project", ROOT / "new_project.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def leaf_patterns() -> dict[str, tuple[str, ...]]:
    """Each leaf's glob patterns (relative to ROOT), whether this copy has the leaf or not."""
    return {name: tuple(new_project().leaf_paths(name, ROOT)) for name in new_project().LEAVES}


def missing_leaves() -> frozenset[str]:
    """The leaves this copy of the template was made without."""
    return frozenset(name for name, leaf in new_project().LEAVES.items()
                     if not (ROOT / leaf.paths[0]).exists())


def leaf_of(relative: str) -> str | None:
    """The leaf the path `relative` (to ROOT) is in, or None."""
    parts = PurePosixPath(relative).parts
    return next((name for name, patterns in leaf_patterns().items()
                 if any(fnmatch.fnmatchcase("/".join(parts[:end]), pattern)
                        for pattern in patterns for end in range(1, len(parts) + 1))), None)


def in_missing_leaf(relative: str) -> bool:
    return leaf_of(relative) in missing_leaves()


def page_name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix() if page.is_relative_to(ROOT) else page.name


def lenient(page: Path) -> bool:
    """Whether what `page` says of a missing leaf goes unchecked: only an unmarked page's."""
    return page_name(page) in UNMARKED_PAGES


def leaf_references(page: Path, line: str) -> set[tuple[str, str]]:
    """(leaf, what) of each reference to a leaf in a `line` of `page`."""
    found, folder = set(), PurePosixPath(page_name(page)).parent
    for token in PATH_TOKEN.findall(line):
        for base in {PurePosixPath("."), folder}:
            path = posixpath.normpath((base / token).as_posix()) if token[0] != "/" else ".."
            if not path.startswith("..") and leaf_of(path):
                found.add((leaf_of(path), token))
    for match in DOTTED_TOKEN.finditer(line):
        if leaf_of(match.group(1)):
            found.add((leaf_of(match.group(1)), match.group()))
    found |= {(LEAF_FLAGS[flag], flag) for flag in FLAG_TOKEN.findall(line) if flag in LEAF_FLAGS}
    found |= {(name, f"--with {name}") for names in WITH_TOKEN.findall(line)
              for name in names.split(",") if name in leaf_patterns()}
    return found


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
        if lenient(page) and file.is_relative_to(ROOT) and \
                in_missing_leaf(file.relative_to(ROOT).as_posix()):
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


def path_problem(span: str, leniently: bool = False) -> tuple[bool, str | None]:
    """Whether `span` is a project path to check, and the problem with it (`leniently`: none
    in a missing leaf)."""
    if not PATH_SPAN.fullmatch(span):
        return False, None
    relative = span.removeprefix("./").rstrip("/")
    first = relative.split("/")[0]
    if not (relative.endswith(".py") or ("/" in span and (ROOT / first).exists())) or \
            (first == "saved" and relative != "saved") or (leniently and in_missing_leaf(relative)):
        return False, None
    if not (ROOT / relative).exists() or (span.endswith("/") and not (ROOT / relative).is_dir()):
        return True, f"`{span}`: no such file or folder in the project"
    return True, None


def dotted_problem(span: str, leniently: bool = False) -> tuple[bool, str | None]:
    """Whether `span` is a dotted name of the project to check, and the problem with it
    (`leniently`: none in a missing leaf)."""
    parts = span.split(".")
    if not DOTTED_SPAN.fullmatch(span) or parts[-1] in FILE_SUFFIXES or \
            module_file(parts[:1]) is None or \
            (parts[0] in EVERYDAY_PACKAGES and module_file(parts[:2]) is None):
        return False, None
    end = max(end for end in range(1, len(parts) + 1) if module_file(parts[:end]))
    file = module_file(parts[:end])  # the longest prefix that is a module
    if leniently and in_missing_leaf(file.relative_to(ROOT).as_posix()):
        return False, None
    if end < len(parts) and parts[end] not in top_level_names(file):
        return True, f"`{span}`: {file.relative_to(ROOT).as_posix()} defines no {parts[end]!r}"
    return True, None


def project_path_problems(page: Path, text: str) -> tuple[int, list[str]]:
    """Every project path and dotted project name in backticks exists."""
    checked, problems = 0, []
    for span, line in code_spans(text):
        for check in (path_problem, dotted_problem):
            counted, problem = check(span, lenient(page))
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
            if lenient(page) and in_missing_leaf(script):
                continue
            if not (ROOT / script).exists():
                problems.append(f"{where(page, number)}: {script}: no such script")
                continue
            checked += 1
            flags = script_flags(script)
            for argument in arguments:
                if lenient(page) and LEAF_FLAGS.get(argument.split("=")[0]) in missing_leaves():
                    continue
                if argument.startswith("-") and argument != "-" and \
                        not re.match(r"-\d", argument) and argument.split("=")[0] not in flags:
                    problems.append(f"{where(page, number)}: {script} has no option "
                                    f"{argument.split('=')[0]} (it has {', '.join(sorted(flags))})")
    return checked, problems


def leaf_marker_problems(page: Path, text: str) -> tuple[int, list[str]]:
    """Every leaf marker is well formed and shows nowhere, and every reference to a leaf is
    marked: what `new_project.py` keeps of the page without that leaf names nothing of it."""
    problems = []
    for number, (line, visible) in enumerate(zip(text.splitlines(), prose(text).splitlines()), 1):
        if not MARKER_LIKE.search(re.sub(r"`+[^`]*`+", "", line)):  # a marker, not one quoted
            continue
        if not visible:
            problems.append(f"{where(page, number)}: a leaf marker in a fenced block shows there; "
                            f"give the leaf's lines a fenced block of their own between markers")
        elif not (new_project().LEAF_BLOCK.fullmatch(line.strip()) or
                  (line.lstrip().startswith("|") and new_project().LEAF_ROW.search(line))):
            problems.append(f"{where(page, number)}: a leaf marker is a line of its own "
                            f"(<!-- leaf: NAME --> or <!-- /leaf: NAME -->) or ends a table row")
    try:
        kept = {name: new_project().strip_leaves(text, {name}) for name in leaf_patterns()}
    except ValueError as error:
        return 1, [*problems, f"{page_name(page)}: {error}"]
    if lenient(page):
        return 1, problems
    checked, lines, own = 0, text.splitlines(), leaf_of(page_name(page))
    for name in sorted(kept.keys() - {own}):
        index = 0
        for line in kept[name].splitlines():  # the page's lines that a copy without `name` keeps
            while lines[index] != line:
                index += 1
            checked += 1
            problems += [f"{where(page, index + 1)}: `{what}` names the leaf {name} outside its "
                         f"markers (<!-- leaf: {name} --> ... <!-- /leaf: {name} -->, or a table "
                         f"row ending in <!-- leaf: {name} -->)"
                         for leaf, what in sorted(leaf_references(page, line)) if leaf == name]
            index += 1
    return checked, problems


CHECKS = [link_problems, json_problems, project_path_problems, command_problems,
          leaf_marker_problems]


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
    lines = (ROOT / "README.md").read_text().splitlines()  # leaf markers count: the file's lines
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
                       "and `test.py -r x.pth --print-config`"),
    leaf_marker_problems: ("Train with `--folds 5`, or see [Search](search-and-kfold.md).\n"
                           "<!-- leaf: examples -->\n`python train.py -c examples/vae.json`, "
                           "`python sweep.py -c config.json`\n<!-- /leaf: examples -->\n"
                           "```bash\n<!-- leaf: bench -->\npython bench/overhead.py\n"
                           "<!-- /leaf: bench -->\n```\nBenchmarks <!-- leaf: bench --> here", 6,
                           "Train with `python train.py -c config.json`.\n<!-- leaf: search -->\n"
                           "Or with `--folds 5`; see [Search](search-and-kfold.md).\n"
                           "<!-- leaf: examples -->\nThe data of `examples.tabular` is "
                           "`data/diabetes.csv.gz`; `--with search,examples`.\n"
                           "<!-- /leaf: examples -->\n<!-- /leaf: search -->\n"
                           "| script | leaf |\n| --- | --- |\n"
                           "| `sweep.py` | search | <!-- leaf: search -->\n"
                           "<!-- leaf: bench -->\n```bash\npython bench/overhead.py\n```\n"
                           "<!-- /leaf: bench -->"),
}
PAGE = ROOT / "docs" / "a-page.md"  # never written: the checks are given its text


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_each_check_finds_the_faults_of_a_broken_page(check):
    broken, faults, fixed = BROKEN[check]
    assert len(check(PAGE, broken)[1]) == faults, check(PAGE, broken)[1]
    checked, problems = check(PAGE, fixed)
    assert problems == [] and checked > 0


def test_a_wrong_leaf_marker_is_one_problem():
    for page, error in [("<!-- leaf: serch -->\nx\n<!-- /leaf: serch -->", "no leaf 'serch'"),
                        ("<!-- leaf: search -->\nx\n<!-- /leaf: bench -->", "closes no open"),
                        ("<!-- leaf: search -->\nx", "never closed")]:
        checked, problems = leaf_marker_problems(PAGE, page)
        assert len(problems) == 1 and error in problems[0], problems


def test_only_the_unmarked_maintainers_map_skips_what_it_says_of_a_missing_leaf(monkeypatch):
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "missing_leaves", lambda: frozenset({"search"}))
    monkeypatch.setattr(this, "script_flags", lambda script: frozenset({"-c", "--config"}))
    page = ("[search](search-and-nowhere.md) `search/no_such_file.py` `search.nothing.Sweep`\n"
            "```bash\npython sweep.py --no-such-flag\npython train.py -c config.json --folds 2\n```")
    checks = [link_problems, json_problems, project_path_problems, command_problems]
    assert [check(ROOT / "docs" / "DESIGN.md", page)[1] for check in checks] == [[], [], [], []]
    assert leaf_marker_problems(ROOT / "docs" / "DESIGN.md", page)[1] == []  # not marked
    # any other page is checked in full: in a copy without the leaf, its blocks are gone
    assert all(check(PAGE, page)[1] for check in (link_problems, project_path_problems,
                                                  command_problems, leaf_marker_problems))


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
