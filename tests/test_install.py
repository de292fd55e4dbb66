"""requirements.lock: one file of exact pins with environment markers for Linux (x86-64, aarch64),
macOS (arm64) and Windows (x86-64), in step with pyproject.toml, with a wheel on each platform for
what applies there, and no index of its own. The checks that ask the package index skip offline."""

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags, mac_platforms
from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from conftest import REPO

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli
    import tomli as tomllib

LOCK = REPO / "requirements.lock"
PYTHON = {"python_version": "3.11", "python_full_version": "3.11.9", "implementation_name": "cpython",
          "platform_python_implementation": "CPython"}


def manylinux(machine: str) -> list[str]:
    """A Linux with glibc 2.28 (2018) or newer takes every manylinux wheel from 2.28 down."""
    legacy = [f"manylinux{name}_{machine}" for name in ("2014", "2010", "1")]  # 2_17, 2_12, 2_5
    return [f"manylinux_2_{minor}_{machine}" for minor in range(28, 4, -1)] + legacy


PLATFORMS = {  # the wheel platform tags and the marker environment of each platform the lock is resolved for
    "linux-x86_64": (manylinux("x86_64"), {"sys_platform": "linux", "platform_machine": "x86_64",
                                               "platform_system": "Linux", "os_name": "posix"}),
    "linux-aarch64": (manylinux("aarch64"), {"sys_platform": "linux", "platform_machine": "aarch64",
                                                 "platform_system": "Linux", "os_name": "posix"}),
    "macos-arm64": (list(mac_platforms((14, 0), "arm64")), {"sys_platform": "darwin", "platform_machine": "arm64",
                                          "platform_system": "Darwin", "os_name": "posix"}),
    "windows-x86_64": (["win_amd64"], {"sys_platform": "win32", "platform_machine": "AMD64",
                                     "platform_system": "Windows", "os_name": "nt"}),
}
INDEX = os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple/"


def pins() -> list[Requirement]:
    lines = [line.strip() for line in LOCK.read_text().splitlines()]
    return [Requirement(line) for line in lines if line and not line.startswith("#")]


def applies(pin: Requirement, environment: dict) -> bool:
    return pin.marker is None or pin.marker.evaluate({**PYTHON, **environment})


def cuda_only() -> re.Pattern:
    """The Makefile's CPU=1 filter: the lines of requirements.lock it leaves out."""
    match = re.search(r"^CUDA_ONLY := (.+)$", (REPO / "Makefile").read_text(), flags=re.M)
    return re.compile(match.group(1))


@functools.cache
def index_unreachable() -> str | None:
    """Why the package index cannot be asked, or None when it can."""
    try:
        urllib.request.urlopen(urllib.request.Request(INDEX.rstrip("/") + "/pip/", method="HEAD"), timeout=10)
    except OSError as err:
        return f"the package index {INDEX} is not reachable ({err})"
    return None


def uv() -> list[str] | None:
    if os.environ.get("UV") or shutil.which("uv"):
        return [os.environ.get("UV") or shutil.which("uv")]
    return [sys.executable, "-m", "uv"] if importlib.util.find_spec("uv") else None


def test_every_line_is_an_exact_pin_and_no_index_is_named():
    text = LOCK.read_text()
    assert not re.search(r"(?m)^\s*(-i|--index-url|--extra-index-url|-f|--find-links|--trusted-host)\b", text)
    found = pins()
    assert len(found) > 100
    for pin in found:
        assert pin.url is None and len(pin.specifier) == 1, str(pin)
        assert next(iter(pin.specifier)).operator == "==", str(pin)
    names = {canonicalize_name(pin.name) for pin in found}
    assert {"torch", "torchvision", "dvc", "pytest"} <= names


def test_cuda_libraries_are_pinned_for_linux_only_and_are_what_cpu_1_leaves_out():
    """nvidia-*, cuda-* and triton come with PyPI's Linux torch: elsewhere they have no wheel at all."""
    others = [env for name, (_, env) in PLATFORMS.items() if not name.startswith("linux")]
    left_out = cuda_only()
    for pin in pins():
        line = str(pin)
        linux_only = pin.marker is not None and "sys_platform == \"linux\"" in str(pin.marker) and not any(
            pin.marker.evaluate({**PYTHON, "python_full_version": version, "python_version": version[:4], **env})
            for env in others for version in ("3.10.0", "3.11.9", "3.12.0", "3.13.0"))
        assert bool(left_out.match(line)) == linux_only, line
    assert any(name.startswith("nvidia-cudnn") for name in map(lambda p: p.name, pins()))


def test_the_lock_is_resolved_for_the_four_platforms():
    """pyproject.toml asks uv for a wheel of every pin on these platforms (tool.uv.required-environments);
    the tests below check them with the same marker environments."""
    wanted = [Marker(text) for text in tomllib.loads((REPO / "pyproject.toml").read_text())
              ["tool"]["uv"]["required-environments"]]
    assert len(wanted) == len(PLATFORMS)
    for _, environment in PLATFORMS.values():
        assert sum(marker.evaluate({**PYTHON, **environment}) for marker in wanted) == 1, environment
    torch = next(pin for pin in pins() if pin.name == "torch")
    assert torch.marker is None and str(torch.specifier) == "==2.14.1"


def test_make_installs_from_the_lock_with_uv_or_pip(tmp_path):
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    venv = tmp_path / "venv"

    def recipe(*options):
        return subprocess.run(["make", "-n", "setup", f"VENV={venv}", *options], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout

    default, cpu = recipe(), recipe("CPU=1")
    assert "uv pip install" in default and "-m pip install" in default and "-r requirements.lock" in default
    assert "torch-backend" not in default and "download.pytorch.org" not in default
    assert "--torch-backend cpu" in cpu and "--extra-index-url https://download.pytorch.org/whl/cpu" in cpu
    assert f"> {venv}/requirements-cpu.txt" in cpu and f"-r {venv}/requirements-cpu.txt" in cpu


def test_the_lock_is_in_step_with_pyproject(tmp_path):
    """Resolving pyproject.toml again, with the lock's pins as preferences, gives the lock unchanged:
    a dependency added, removed or narrowed without regenerating the lock fails here."""
    if index_unreachable():
        pytest.skip(index_unreachable())
    command = uv()
    if command is None:
        pytest.skip("uv is not installed (pip install uv, or set UV=/path/to/uv)")
    header = LOCK.read_text().splitlines()[1].lstrip("# ").strip()
    assert header.startswith("uv pip compile --universal pyproject.toml")
    again = tmp_path / "requirements.lock"
    shutil.copy(LOCK, again)  # the lock's pins are preferences: only what pyproject.toml changed moves
    arguments = header.split()[3:-1] + [str(again), "--quiet", "--custom-compile-command", header]
    result = subprocess.run([*command, "pip", "compile", *arguments], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env={k: v for k, v in os.environ.items() if not k.startswith("UV_")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert again.read_text() == LOCK.read_text(), f"requirements.lock is stale: run {header}"


@functools.cache
def files(name: str) -> tuple[str, ...]:
    """The file names the package index lists for a project (its simple API, JSON or HTML)."""
    request = urllib.request.Request(f"{INDEX.rstrip('/')}/{name}/", headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read().decode()
        if "json" in response.headers.get("Content-Type", ""):
            return tuple(item["filename"] for item in json.loads(body)["files"])
    return tuple(re.findall(r">([^<]+\.(?:whl|tar\.gz|zip))<", body))


def wheel(name: str) -> bool:
    return name.endswith(".whl")


def wheel_release(name: str) -> tuple[Version | None, frozenset[Tag]]:
    try:
        return parse_wheel_filename(name)[1::2]
    except (InvalidWheelFilename, InvalidVersion):  # old uploads that predate the rules
        return None, frozenset()


def sdist_release(name: str) -> Version | None:
    try:
        return parse_sdist_filename(name)[1]
    except (InvalidSdistFilename, InvalidVersion):
        return None


def supported(tags: list[str]) -> set[Tag]:
    """The wheel tags a CPython 3.11 on those platforms installs, as pip computes them."""
    return {*cpython_tags((3, 11), platforms=tags), *compatible_tags((3, 11), "cp311", platforms=tags)}


@pytest.mark.parametrize("platform", PLATFORMS)
def test_each_platform_has_a_wheel_for_every_pin_that_applies_there(platform):
    """A pin that applies on the platform has a wheel for it there, or no wheel anywhere (a pure-Python
    source release, built the same everywhere). Asks the index's list of files: nothing is downloaded."""
    if index_unreachable():
        pytest.skip(index_unreachable())
    platforms, environment = PLATFORMS[platform]
    accepted = supported(platforms)
    wanted = [pin for pin in pins() if applies(pin, environment)]
    with ThreadPoolExecutor(8) as pool:
        listed = dict(zip(wanted, pool.map(lambda pin: files(canonicalize_name(pin.name)), wanted)))
    missing = []
    for pin, names in listed.items():
        version = Version(next(iter(pin.specifier)).version)
        wheels = [tags for release, tags in map(wheel_release, filter(wheel, names)) if release == version]
        sources = [name for name in names if not wheel(name) and sdist_release(name) == version]
        if not wheels and not sources:
            missing.append(f"{pin}: not on the index")
        elif wheels and not any(tags & accepted for tags in wheels):
            missing.append(f"{pin}: no wheel for {platform}")
    assert not missing, "\n".join(missing)
