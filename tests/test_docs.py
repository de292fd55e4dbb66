"""The README and the manual: small, linked, and never stale. Every table of numbers is written by
tools/docs_tables.py from the committed metrics and benchmark results; the params reference and the
JSON Schema from the validation schema; the tutorial's expected output by tools/captures.py from a
real run. Every shell block is run, by tools/captures.py (a captured block) or by the tests and CI
files that `<!-- run by: FILE, FILE -->` names on the line before it, or is marked
`<!-- illustrative -->` there (a command that needs your data, a GPU, a cluster or hours: shown, never
run)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

DOCUMENTS = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").rglob("*.md"))]
PAGES = sorted((REPO / "docs").rglob("*.md"))  # the site
SHELL = {"bash", "sh", "shell", "console", "powershell"}
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
GENERATED = re.compile(r"<!-- (table|capture): [^>]+ -->\n.*?<!-- /(table|capture) -->", re.S)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """The anchor GitHub (and mkdocs' toc) give a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"(?m)^#+ (.+)$", text)}


def test_the_readme_is_a_front_door_under_12_kb():
    text = (REPO / "README.md").read_text()
    assert len(text.encode()) <= 12_000
    first = text.split("```bash\n", 1)[1].split("```", 1)[0]  # the two commands come first
    assert [line.split()[:2] for line in first.strip().splitlines()] == [["make", "repro"], ["make", "test"]]
    assert "make test" in (REPO / ".ci" / "run").read_text()


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_relative_link_resolves(document):
    for match in LINK.finditer(re.sub(r"```.*?```", "", document.read_text(), flags=re.S)):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        assert resolved.exists(), f"{document.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{document.name}: {target}: no such heading"


def test_every_docs_page_is_in_the_site_navigation():
    config = (REPO / "mkdocs.yml").read_text()
    for page in PAGES:
        assert page.relative_to(REPO / "docs").as_posix() in config, page.name


def shell_blocks(document: Path) -> list[tuple[str, str, bool]]:
    """(the line before the block, its text, whether tools/captures.py runs it) of every shell block."""
    text, found = document.read_text(), []
    captured = [m.span() for m in re.finditer(r"<!-- capture: .*?<!-- /capture -->", text, re.S)]
    for match in FENCE.finditer(text):
        language, body = match.group(1), match.group(2)
        untagged_command = not language and re.match(r"(\$ )?(dvc|python|make|git|pip|source|export|cd|mkdir) ", body)
        if language in SHELL or untagged_command:
            before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            found.append((before, body, any(a <= match.start() < b for a, b in captured)))
    return found


def commands(block: str) -> list[str]:
    """A shell block's commands: continued lines joined, comments and blank lines dropped, spaces collapsed."""
    lines = (" ".join(line.split(" #")[0].split()) for line in block.replace("\\\n", " ").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def runs(runner: Path, page: str, command: str) -> bool:
    """A file named in `run by:` runs a command when it holds it as written (spaces aside), or when
    it reads the page's marked blocks with conftest.documented_commands, to run them as written."""
    source = runner.read_text()
    return command in " ".join(source.split()) or ("documented_commands(" in source and f'"{page}"' in source)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_shell_block_is_run_or_marked_illustrative(document):
    """A reader copies shell blocks: each is run by tools/captures.py (its output is on the page) or
    says it is illustrative; none holds a bare `...` a shell would choke on."""
    for before, body, captured in shell_blocks(document):
        runners = re.fullmatch(r"<!-- run by: (.+) -->", before)
        assert captured or runners or before == "<!-- illustrative -->", \
            f"{document.name}: neither run nor marked illustrative:\n{body}"
        if runners:
            named = [REPO / name.strip() for name in runners.group(1).split(",")]
            page = document.relative_to(REPO).as_posix()
            for command in commands(body):
                assert any(runs(runner, page, command) for runner in named), \
                    f"{page}: no file of {runners.group(1)} runs `{command}`"
        assert not re.search(r"(^|\s)\.\.\.(\s|$)", body), f"{document.name}: a bare ... in\n{body}"


def test_the_block_rule_catches_an_unmarked_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Run:\n\n```bash\ndvc repro ...\n```\n\n<!-- illustrative -->\n```bash\ndvc repro\n```\n")
    (first, _, captured), (second, _, _) = shell_blocks(page)
    assert first != "<!-- illustrative -->" and not captured and second == "<!-- illustrative -->"


def test_a_runner_that_only_mentions_a_command_does_not_run_it(tmp_path):
    runner = tmp_path / "test_x.py"
    runner.write_text('# dvc exp run, then -S lenet.lr=0.02\nsubprocess.run(["dvc", "exp", "run"])\n')
    assert commands("dvc exp run \\\n  -S lenet.lr=0.02   # a faster LeNet\n\n") == ["dvc exp run -S lenet.lr=0.02"]
    assert not runs(runner, "docs/x.md", "dvc exp run -S lenet.lr=0.02")
    runner.write_text('subprocess.run("dvc  exp run -S lenet.lr=0.02", shell=True)\n')
    assert runs(runner, "docs/x.md", "dvc exp run -S lenet.lr=0.02")
    runner.write_text('for command in documented_commands("docs/x.md"):\n    subprocess.run(command)\n')
    assert runs(runner, "docs/x.md", "dvc exp run -S lenet.lr=0.02") and not runs(runner, "docs/y.md", "dvc repro")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_no_hand_written_page_is_over_about_10_kb(document):
    """Generated tables and captures do not count: they are the numbers, stated once."""
    assert len(GENERATED.sub("", document.read_text()).encode()) <= 10_752, document.name


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_no_page_names_a_path_users_do_not_have(document):
    text = document.read_text()
    assert "../shared" not in text and "/work/" not in text, document.name


def test_site_pages_link_only_inside_the_site():
    """mkdocs publishes docs/ alone: a link to ../report or ../benchmarks would be a broken link there."""
    for page in PAGES:
        for match in LINK.finditer(re.sub(r"```.*?```", "", page.read_text(), flags=re.S)):
            target = (match.group(1) or match.group(2)).partition("#")[0]
            if target and not re.match(r"[a-z]+:", target):
                assert (page.parent / target).resolve().is_relative_to(REPO / "docs"), f"{page.name}: {target}"


def test_captured_output_is_what_the_capture_files_hold():
    """Each tutorial block's output came from tools/captures.py's real run (docs/captures/*.json)."""
    result = subprocess.run([sys.executable, "tools/captures.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(list((REPO / "docs" / "captures").glob("*.json"))) >= 10


def test_an_edited_command_or_output_is_caught(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "tools"))
    import captures
    page, name, body = captures.blocks()[0]
    edited = tmp_path / page.name
    edited.write_text(page.read_text().replace(body, body.replace("$ ", "$ sudo ", 1)))
    monkeypatch.setattr(captures, "PAGES", [edited])
    assert captures.check() and name in captures.check()[0]


def test_tables_and_schema_are_generated_from_the_committed_numbers():
    """A table that disagrees with the metrics or benchmark results it is written from fails here."""
    result = subprocess.run([sys.executable, "tools/docs_tables.py", "--check"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    tables = sum(path.read_text().count("<!-- table: ") for path in DOCUMENTS)
    assert tables >= 6


def test_a_stale_table_is_caught(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "tools"))
    import docs_tables
    text = "<!-- table: results -->\n| model | old |\n<!-- /table -->\n"
    assert docs_tables.render(text) != text
    assert "**" in docs_tables.render(text)  # the test accuracy, from metrics/summary.csv


def test_the_json_schema_matches_the_validation_schema_and_accepts_params_yaml():
    from cnnlab import models
    from cnnlab.config.params import SCHEMA, read_yaml
    schema = json.loads((REPO / "params.schema.json").read_text())
    params = read_yaml((REPO / "params.yaml").read_text())
    assert set(schema["properties"]) == set(SCHEMA) | {"models"} | set(models.names())
    for section, checks in SCHEMA.items():
        assert set(schema["properties"][section]["properties"]) == set(checks)
        assert set(params[section]) <= set(checks)
    assert schema["properties"]["train"]["properties"]["optimizer"]["enum"] == ["adam", "adamw", "sgd"]
    assert schema["properties"]["train"]["properties"]["epochs"] == {
        "type": "integer", "minimum": 1, "maximum": 10000, "description": schema["properties"]["train"]["properties"]["epochs"]["description"]}
    assert (REPO / "params.yaml").read_text().startswith("# yaml-language-server: $schema=params.schema.json")


def test_no_timings_in_code_comments_or_docstrings():
    """Measurements are stated once, in benchmarks/results and the docs generated from them."""
    import ast
    import io
    import tokenize
    timing = re.compile(r"\b\d+(\.\d+)?\s?(s|ms|sec|seconds|minutes|min)\b(?![\w/])")
    found = []
    for path in [*(REPO / "src").rglob("*.py"), *(REPO / "stages").glob("*.py")]:
        source = path.read_text()
        comments = [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT]
        docstrings = [ast.get_docstring(node) or "" for node in ast.walk(ast.parse(source))
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        found += [f"{path.relative_to(REPO)}: {text.strip()[:100]}" for text in comments + docstrings
                  if timing.search(text)]
    yaml_comments = [line.split("#", 1)[1] for line in (REPO / "params.yaml").read_text().splitlines() if "#" in line]
    found += [f"params.yaml: {c.strip()}" for c in yaml_comments if timing.search(c)]
    assert not found, "\n".join(found)


def test_every_params_key_says_what_it_does():
    """The params reference's last column comes from the comment beside each key in params.yaml."""
    text = (REPO / "docs" / "params.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `") and line.count("|") == 5]
    assert len(rows) > 40 and not [row for row in rows if row.rstrip().endswith("|  |")]


def test_the_manual_builds_as_a_site_with_mkdocs_strict(tmp_path):
    """mkdocs and its theme are in the test extra (requirements.lock), so `make test` builds the site."""
    import importlib.util
    assert importlib.util.find_spec("mkdocs") and importlib.util.find_spec("material"), \
        "mkdocs or mkdocs-material is missing: this environment predates requirements.lock; run make setup"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                            cwd=REPO, capture_output=True, text=True, env={**__import__("os").environ,
                                                                            "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "studies" / "index.html").is_file()
    assert broken_in_site(tmp_path / "site") == []


class _References(__import__("html.parser").parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.found = []

    def handle_starttag(self, tag, attrs):
        self.found += [value for name, value in attrs if name in ("href", "src") and value]


def broken_in_site(site: Path) -> list[str]:
    """Every relative link and image of the built site's pages that leads to no file."""
    from urllib.parse import unquote, urlparse
    broken = []
    for page in site.rglob("*.html"):
        parser = _References()
        parser.feed(page.read_text())
        for reference in parser.found:
            url = urlparse(reference)
            if url.scheme or url.netloc or not url.path:
                continue
            base = site if url.path.startswith("/") else page.parent  # 404.html links from the site's root
            target = (base / unquote(url.path).lstrip("/")).resolve()
            if not (target.is_file() or (target / "index.html").is_file()):
                broken.append(f"{page.relative_to(site)}: {reference}")
    return broken


def test_the_site_checker_finds_a_broken_image(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "index.html").write_text('<a href="../b/">b</a><img src="../missing.png"><a href="#top">t</a>'
                                               '<a href="/b/">root</a><a href="https://dvc.org">dvc</a>')
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "index.html").write_text("<p>b</p>")
    assert broken_in_site(tmp_path) == ["a/index.html: ../missing.png"]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_no_command_trains_a_cifar_model_on_mnist_silently(document):
    """The default dataset is MNIST: a command that picks a CIFAR model names its dataset too."""
    commands = re.findall(r"dvc exp run[^\n`]*", document.read_text().replace("\\\n", " "))  # continued lines joined
    for command in commands:
        if re.search(r"models=\[[^\]]*(airbench|resnet_small|resnet18)", command):
            assert "data.dataset=" in command, f"{document.name}: {command}"
