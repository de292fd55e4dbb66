"""The house a learner walks: modules import downwards only, in the order data flows, with no circles;
and no comment or docstring points at a file that is not there."""

import ast
import io
import re
import subprocess
import tokenize
from pathlib import Path

from conftest import REPO

SRC = REPO / "src"

# Lowest first: a module may import from its own layer or a lower one, never from a higher one.
LAYERS = [
    ("cnnlab", "cnnlab.checks", "cnnlab.plumbing", "cnnlab.config.paths"),     # the ground floor
    ("cnnlab.runtime", "cnnlab.datasets", "cnnlab.models", "cnnlab.losses"),   # data in, models and losses
    ("cnnlab.config", ),                                                       # params.yaml, checked against them
    ("cnnlab.engine", "cnnlab.augment", "cnnlab.prepare", "cnnlab.figures", "cnnlab.results"),
    ("cnnlab.train", "cnnlab.explain"),
    ("cnnlab.analyses", "cnnlab.evaluate"),
    ("cnnlab.analyze", "cnnlab.report", "cnnlab.predict", "cnnlab.export_pngs"),  # what stages and users call
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.joinpath("cnnlab").rglob("*.py")}


def layer(module: str) -> int:
    """The layer of the longest prefix that names one (cnnlab.config.paths before cnnlab.config)."""
    best = max(((len(prefix), i) for i, prefixes in enumerate(LAYERS) for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), default=None)
    assert best is not None, f"{module}: in no layer of tests/test_layout.py"
    return best[1]


def imports(module: str) -> set[str]:
    """The cnnlab modules `module` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                      for alias in node.names}
    return {name for name in found if name in MODULES and name != module}


def test_every_import_goes_down_or_across_never_up():
    upward = [f"{module} (layer {layer(module)}) imports {other} (layer {layer(other)})"
              for module in MODULES for other in imports(module) if layer(other) > layer(module)]
    assert not upward


def test_no_module_imports_itself_through_others():
    graph = {module: imports(module) for module in MODULES}
    circles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                circles.append(" -> ".join(path[path.index(other):] + [other]))
            elif other not in state:
                visit(other, path + [other])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles


FILE_NAME = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w-]+\.(?:py|md|yaml|yml|json|csv|sh|txt|toml|lock|png))\b")
OUTPUTS = ("data/", "models/", "dvclive/", ".cnnlab/", "site/", "dvc_plots/")  # made by the pipeline, not in git


def comments_and_docstrings(path: Path) -> list[str]:
    text = path.read_text()
    found = [tok.string for tok in tokenize.generate_tokens(io.StringIO(text).readline) if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.append(ast.get_docstring(node) or "")
    return found


def yaml_comments(path: Path) -> list[str]:
    return [line.split("#", 1)[1] for line in path.read_text().splitlines() if "#" in line]


def test_no_comment_or_docstring_names_a_file_that_is_not_there():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    names = {Path(t).name for t in tracked}
    missing = []
    for path in [*SRC.rglob("*.py"), *REPO.glob("stages/*.py"), *REPO.glob("tools/*.py"), *REPO.glob("benchmarks/*.py"),
                 REPO / "params.yaml", REPO / "dvc.yaml"]:
        for text in comments_and_docstrings(path) if path.suffix == ".py" else yaml_comments(path):
            for name in FILE_NAME.findall(text):
                if name.startswith(OUTPUTS) or "/" not in name and (name in names or not name.endswith(".py")):
                    continue  # a bare name other than code: a user's file (labels.csv) or one the pipeline writes
                if not any(t == name or t.endswith("/" + name) for t in tracked):
                    missing.append(f"{path.relative_to(REPO)}: {name}")
    assert not missing
