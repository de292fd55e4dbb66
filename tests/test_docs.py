"""The README and the manual: small, linked, and never stale. Every table of numbers is written by
tools/docs_tables.py from the committed metrics and benchmark results; the params reference and the
JSON Schema from the validation schema."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
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
    for page in (REPO / "docs").glob("*.md"):
        assert page.name in config, page.name


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
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                            cwd=REPO, capture_output=True, text=True, env={**__import__("os").environ,
                                                                            "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "studies" / "index.html").is_file()
