"""dvc.yaml is checked, never trusted: each stage's deps are exactly the code it runs (its script and
every cnnlab module that script imports, transitively, lazy imports inside functions included; a
code folder such as src/cnnlab/config stands for every module in it, so it may only be listed where
each of them would be; a per-model stage's one list holds what any model needs; a stage that picks
its loss by name holds every loss) plus
the data it reads; its outs are exactly what cnnlab.config.paths says it writes; its params are exactly
what the stage loads (a stage sees only its declared params, see test_params.py)."""

import ast
from pathlib import Path

import pytest
import yaml

from cnnlab import models, report
from cnnlab.config import paths
from conftest import REPO

SRC = REPO / "src"
DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]

# Data each stage reads besides code: the outputs of the stages before it.
DATA_DEPS = {
    "download": set(),
    "prepare": {paths.OUTPUTS["download"]["raw"]},
    "train": {paths.OUTPUTS["prepare"]["prepared"]},
    "evaluate": {paths.OUTPUTS["prepare"]["prepared"], paths.OUTPUTS["train"]["checkpoint"]},
    "samples": {paths.OUTPUTS["prepare"]["prepared"]},
    "analyze": {paths.OUTPUTS["prepare"]["prepared"], paths.OUTPUTS["train"]["checkpoint"]},
}


def module_file(name: str) -> Path | None:
    """The file of a cnnlab module (or package), or None for anything outside cnnlab."""
    if name != "cnnlab" and not name.startswith("cnnlab."):
        return None
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(path: Path) -> set[str]:
    """Module names `path` imports anywhere in its body (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            # `from cnnlab.config import params` imports the module cnnlab.config.params
            found |= {f"{node.module}.{alias.name}" for alias in node.names
                      if module_file(f"{node.module}.{alias.name}") is not None}
    return found


def code_deps(script: Path) -> set[str]:
    """The script and every cnnlab file it loads, with the packages around each module."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imports_of(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                found = module_file(".".join(parts[:i]))
                if found is not None:
                    todo.append(found)
    return {p.relative_to(REPO).as_posix() for p in seen}


def declared_deps(stage: dict, model: str) -> set[str]:
    """The stage's deps for `model`, a code folder (src/cnnlab/config) standing for every module in it."""
    deps = set()
    for dep in (d.replace("${item.model}", model) for d in stage["deps"]):
        folder = REPO / dep
        deps |= {p.relative_to(REPO).as_posix() for p in folder.rglob("*.py")} \
            if dep.startswith("src/") and folder.is_dir() else {dep}
    return deps


def script_of(stage: dict) -> Path:
    return REPO / stage["cmd"].split()[1]


def out_paths(stage: dict, model: str) -> set[str]:
    outs = stage.get("outs", []) + stage.get("plots", [])  # plots: the cache: false outputs, see dvc.yaml
    return {(next(iter(o)) if isinstance(o, dict) else o).replace("${item.model}", model) for o in outs}


def stage_code(stage: dict, model: str) -> set[str]:
    """What a stage runs: its script's import closure, and for a model's stage the closure of that
    model's own module (imported by name when the model is built: cnnlab.models.spec)."""
    code = code_deps(script_of(stage))
    if model:
        code |= code_deps(SRC / "cnnlab" / "models" / f"{model}.py")
    # modules imported by name: the loss train.loss names, and every analysis of cnnlab/analyses/
    if any("losses.function(" in (REPO / path).read_text() for path in code):
        code = code.union(*(code_deps(module) for module in (SRC / "cnnlab" / "losses").glob("*.py")))
    if "src/cnnlab/analyses/__init__.py" in code:
        code = code.union(*(code_deps(module) for module in (SRC / "cnnlab" / "analyses").glob("*.py")))
    return code


@pytest.mark.parametrize("name", sorted(STAGES))
def test_deps_are_exactly_the_code_and_data_the_stage_reads(name):
    stage = STAGES[name]
    model = "lenet" if "matrix" in stage else ""
    code = {d for d in declared_deps(stage, model) if d.endswith(".py")}
    if model:  # one list for every model: each model's closure is in it, and nothing else
        closures = {m: stage_code(stage, m) for m in models.names()}
        for m, closure in closures.items():
            assert closure <= declared_deps(stage, m), f"{name}@{m}: missing {sorted(closure - declared_deps(stage, m))}"
        every = set().union(*({d.replace(f"models/{m}.py", "models/lenet.py") for d in c} for m, c in closures.items()))
        assert code <= every, f"{name}: extra {sorted(code - every)}"
    else:
        assert code == stage_code(stage, model), (
            f"{name}: missing {sorted(stage_code(stage, model) - code)}, extra {sorted(code - stage_code(stage, model))}")
    data = declared_deps(stage, model) - code
    if name == "report":  # every model's results: the folders that hold them (models come from params)
        expected = {str(path if stage_name == "samples" else path.parent)
                    for stage_name, roles in report.READS.items()
                    for path in (getattr(paths.outputs(stage_name, "any"), role) for role in roles)}
    else:
        expected = {d.format(model=model) for d in DATA_DEPS[name]}
    assert data == expected


@pytest.mark.parametrize("name", sorted(STAGES))
def test_outs_are_exactly_what_the_paths_module_says(name):
    stage = STAGES[name]
    model = "lenet" if "matrix" in stage else ""
    assert out_paths(stage, model) == {str(p) for p in vars(paths.outputs(name, model)).values()}


def test_every_stage_script_is_in_dvc_yaml():
    scripts = {script_of(stage).name for stage in STAGES.values()}
    assert scripts == {p.name for p in (REPO / "stages").glob("*.py")}


def test_no_stage_imports_a_model_module_except_by_name():
    """Only the model's own stages depend on its file: no cnnlab module imports a model's module
    (cnnlab.models.spec imports it by name), so editing lenet.py reruns only lenet's stages."""
    for stage in STAGES.values():
        for dep in code_deps(script_of(stage)):
            assert not (dep.startswith("src/cnnlab/models/") and not dep.endswith("__init__.py")), dep


def test_dvc_reads_yaml_with_the_c_parser():
    """DVC parses dvc.lock several times for every stage it runs; ruamel.yaml's pure-Python parser
    made that a visible share of each stage (pyproject.toml installs ruamel.yaml.clib)."""
    from ruamel.yaml import YAML
    parser = YAML(typ="safe").Parser
    assert parser.__name__ == "CParser", f"{parser.__module__}.{parser.__name__}: pip install ruamel.yaml.clib"


def test_dvc_lock_records_only_stages_dvc_yaml_defines():
    """DVC never drops the lock entry of a stage removed from dvc.yaml; a stale one is parsed, checked
    and rewritten with every stage DVC runs. (A model left out of `models:` keeps its entries: its
    stage is still defined.)"""
    locked = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    assert {name.split("@")[0] for name in locked} <= set(STAGES), sorted(locked)


def test_python_caches_and_editor_files_in_code_folders_are_not_hashed():
    """A code folder's hash is its sources': bytecode caches that Python writes beside them, or an
    editor's swap and backup files, would otherwise mark every stage changed."""
    import subprocess
    folders = {d for stage in STAGES.values() for d in stage["deps"]
               if d.startswith("src/") and (REPO / d).is_dir()}
    assert folders >= {"src/cnnlab/config", "src/cnnlab/plumbing", "src/cnnlab/engine", "src/cnnlab/datasets"}
    ignored = [f"{folder}/{name}" for folder in sorted(folders)
               for name in ("__pycache__/x.cpython-311.pyc", "params.py~", ".params.py.swp", ".#params.py")]
    result = subprocess.run(["dvc", "check-ignore", *ignored, "src/cnnlab/config/params.py"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.stdout.split() == ignored, result.stdout + result.stderr  # the source itself is hashed
