"""The manual's commands cannot rot: every command in a code block of README.md and docs/*.md is checked against the
real parsers, in this process, so that a renamed or moved flag fails the suite instead of misleading a reader.
Training and ablate lines plan with --dry-run (no torch, nothing written); status, eval, predict, export and
--resume lines parse (their folders need not exist); list and fields run; bench.py and scripts/*.py lines parse
with their own parsers. The links between the pages are checked too."""
import importlib.util
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

import ladder
import main
from runner import ladder_files, train_command

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = {"bench.py", *(f"scripts/{path.name}" for path in (ROOT / "scripts").glob("*.py"))}
SEPARATORS = {"&", "&&", ";"}
ASSIGNMENT = re.compile(r'^([A-Za-z_]\w*)="([^"$`]*)"$')
VARIABLE = re.compile(r"\$\{?([A-Za-z_]\w*)\}?")

# Commands that name a shell variable their block does not set; none so far.
UNEXPANDED: set[tuple[str, int]] = set()


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    program: str  # main.py, bench.py or scripts/NAME.py
    words: tuple

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.program} {shlex.join(self.words)}"


def logical_lines(text: str):
    """(line number, line) of each shell line in the fenced code blocks, continuations joined, with the simple
    variable assignments seen so far in its block."""
    fenced, pending, start, variables = False, "", 0, {}
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced, pending, variables = not fenced, "", {}
            continue
        if not fenced:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole, pending = (pending + line).strip(), ""
        assignment = ASSIGNMENT.match(whole)
        if assignment:
            variables[assignment.group(1)] = assignment.group(2)
            continue
        yield start, whole, dict(variables)


def commands_of(words: list) -> list[list]:
    """The commands of one shell line's words, split at & and ;, without a leading prompt."""
    commands, current = [], []
    for word in words + ["&"]:
        if word in SEPARATORS:
            if current:
                commands.append(current[1:] if current[0] == "$" else current)
            current = []
        else:
            current.append(word)
    return commands


def program_and_words(words: list) -> tuple[str, tuple] | None:
    """The program this project provides and its words, or None for any other command (pip, pytest, output)."""
    if words[0] == "torchrun":
        if "main.py" not in words:
            return None
        return "main.py", tuple(words[words.index("main.py") + 1:])
    if words[0] in ("python", "python3") and len(words) > 1 and (words[1] == "main.py" or words[1] in SCRIPTS):
        return words[1], tuple(words[2:])
    return None


def documented_commands() -> tuple[list[Command], list[tuple[str, int]]]:
    """Every command of the manual, and the (page, line) of those naming a variable their block does not set."""
    commands, unexpanded = [], []
    for page in PAGES:
        name = page.relative_to(ROOT).as_posix()
        for number, line, variables in logical_lines(page.read_text()):
            if not re.match(r"^(\$ )?(python3?|torchrun) ", line):
                continue
            expanded = VARIABLE.sub(lambda match: variables.get(match.group(1), match.group(0)), line)
            if VARIABLE.search(expanded.split("#")[0]):
                unexpanded.append((name, number))
                continue
            for words in commands_of(shlex.split(expanded, comments=True)):
                found = program_and_words(words)
                if found:
                    commands.append(Command(name, number, *found))
    return commands, unexpanded


def script_parser(program: str):
    """The parser of bench.py or a script, from its build_parser, imported without running it."""
    spec = importlib.util.spec_from_file_location(f"documented_{Path(program).stem}", ROOT / program)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def check(command: Command, parsers: dict) -> None:
    """Raises SystemExit (with argparse's message on stderr) or AssertionError when the command is not right."""
    words, ladder_file = main.take_ladder(list(command.words))
    if ladder_file:  # the examples' paths are the repository's; the rows are the file's from here on
        ladder_file = str(ROOT / ladder_file)
        ladder_files.load(ladder_file)
        words += ["--ladder", ladder_file]
    else:
        ladder.use_built_in()
    if command.program != "main.py":
        if command.program not in parsers:
            parsers[command.program] = script_parser(command.program)
        parsers[command.program].parse_args(words)
    elif words and words[0] == "status":
        main.build_status_parser().parse_args(words[1:])
    elif words and words[0] in ("eval", "predict", "export"):
        main.build_saved_run_parser(words[0]).parse_args(words[1:])
    elif "--resume" in words:
        train_command.build_parser().parse_args(words)
    elif not words or words[0] in ("list", "fields", "--ladder"):
        assert main.main(words) == 0
    else:
        status = main.main(words + ["--dry-run"])
        assert status == 0, f"exit status {status} with --dry-run"


def stand_in_image_folder(root: Path) -> None:
    """An image folder of CIFAR-10's shape with enough files for the documented --holdout 5000; one image is
    written, the rest are its copies, since a dry run decodes only the first to learn the images' size."""
    image = root / "first.png"
    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32)).save(image)
    pixels = image.read_bytes()
    for split, count in (("train", 600), ("test", 1)):
        for label in range(10):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                (folder / f"{index:04d}.png").write_bytes(pixels)


def test_every_documented_command_parses_and_plans(tmp_path, monkeypatch, capsys):
    commands, unexpanded = documented_commands()
    assert set(unexpanded) == UNEXPANDED, f"commands with a variable their block does not set: {unexpanded}"
    assert len(commands) > 80, f"only {len(commands)} commands found: is the collection broken?"
    # Output folders and datasets are missing here, as a reader's may be: a dry run plans them all the same. An
    # image folder it must find (a usage error otherwise, as the command would give), so each named one stands in.
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for command in commands:
        if "--image-folder" in command.words:
            folder = work / command.words[command.words.index("--image-folder") + 1]
            if not folder.exists():
                stand_in_image_folder(folder)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    parsers, failures = {}, []
    for command in commands:
        try:
            check(command, parsers)
        except (SystemExit, AssertionError) as failure:
            said = capsys.readouterr().err.strip().splitlines()
            failures.append(f"{command}\n    {said[-1] if said else failure}")
        capsys.readouterr()
    assert not failures, f"{len(failures)} documented command(s) fail:\n" + "\n".join(failures)
    print(f"{len(commands)} documented commands checked", file=sys.stderr)


def anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings."""
    found = set()
    for heading in re.findall(r"^#+ (.*)$", text, re.MULTILINE):
        found.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return found


def test_every_link_between_the_pages_leads_somewhere():
    broken = []
    for page in PAGES:
        text = page.read_text()
        for number, line in enumerate(text.splitlines(), 1):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"^[a-z]+:", target):
                    continue
                path, _, anchor = target.partition("#")
                linked = (page.parent / path).resolve() if path else page
                if not linked.exists():
                    broken.append(f"{page.relative_to(ROOT)}:{number}: {target} (no such file)")
                elif anchor and anchor not in anchors(linked.read_text()):
                    broken.append(f"{page.relative_to(ROOT)}:{number}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", [page.relative_to(ROOT).as_posix() for page in PAGES[1:]])
def test_every_page_is_linked_from_the_readme(page):
    assert f"]({page})" in (ROOT / "README.md").read_text()
