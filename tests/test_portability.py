"""Stages on macOS and Windows: the stage process's Linux-only calls (prctl through ctypes, /proc,
os.sysconf, the pid probe of the sweep, the C library's fflush) give way quietly where they do not
exist, and an Apple GPU (mps) is picked, named and run with the precision docs/install.md states.
No Mac or Windows machine here: their absence is simulated."""

import ctypes
import os
import signal
import subprocess
import sys

import pytest
import torch

from cnnlab import CnnlabError, runtime
from cnnlab.plumbing import stage, timing
from cnnlab.engine.inference import autocast_dtype

END_PROCESS = stage._end_process  # conftest replaces it in every test, so that no test ends pytest


class FakeLibc:
    def __init__(self, calls):
        self.calls = calls

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, args)) or 0


@pytest.fixture
def libc(monkeypatch):
    """ctypes.CDLL replaced by a recorder of the C functions called through it."""
    calls = []
    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: FakeLibc(calls))
    return calls


def no_c_library(*args, **kwargs):
    raise TypeError("LoadLibrary() argument 1 must be str, not None")  # what CDLL(None) does on Windows


@pytest.fixture
def same_parent(monkeypatch):
    monkeypatch.setattr(stage, "PARENT_AT_START", os.getppid())


def test_linux_asks_to_end_with_its_parent(monkeypatch, libc, same_parent):
    monkeypatch.setattr(sys, "platform", "linux")
    stage._end_with_parent()
    assert libc == [("prctl", (1, signal.SIGTERM))]


@pytest.mark.parametrize("platform", ["win32", "darwin"])
def test_elsewhere_nothing_is_asked_and_nothing_fails(monkeypatch, libc, same_parent, platform):
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(ctypes, "CDLL", no_c_library)
    stage._end_with_parent()  # no TypeError from CDLL(None)


def test_a_parent_gone_before_the_question_is_still_an_interruption(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(stage, "PARENT_AT_START", os.getppid() + 1)
    with pytest.raises(KeyboardInterrupt):
        stage._end_with_parent()


def test_a_c_library_without_prctl_is_quiet(monkeypatch, same_parent):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: object())  # AttributeError: no prctl
    stage._end_with_parent()


def test_start_up_is_left_out_without_proc(monkeypatch):
    assert timing._seconds_since_start() is not None or not os.path.exists("/proc/self/stat")

    def no_proc(path, *args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", path)

    monkeypatch.setattr(timing, "open", no_proc, raising=False)
    assert timing._seconds_since_start() is None


def test_start_up_is_left_out_without_sysconf(monkeypatch):
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("no /proc here: the sysconf call is never reached")
    monkeypatch.delattr(os, "sysconf")
    assert timing._seconds_since_start() is None


def run_stage(monkeypatch, platform):
    """stage.run around a main that records it ran; what it swept."""
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(stage, "PARENT_AT_START", os.getppid())
    swept, ran = [], []
    monkeypatch.setattr(stage, "sweep_temporaries", lambda: swept.append(True))
    previous = signal.getsignal(signal.SIGTERM)
    try:
        stage.run(lambda: ran.append(True))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert ran == [True]
    return swept


def test_windows_runs_a_stage_without_the_pid_probe_or_the_c_library(monkeypatch):
    monkeypatch.setattr(ctypes, "CDLL", no_c_library)
    assert run_stage(monkeypatch, "win32") == []  # os.kill(pid, 0) would be Ctrl-C there
    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: FakeLibc([]))
    assert run_stage(monkeypatch, "linux") == [True]


def test_a_python_without_sigterm_runs_a_stage(monkeypatch):
    monkeypatch.delattr(signal, "SIGTERM")
    monkeypatch.setattr(stage, "PARENT_AT_START", os.getppid())
    monkeypatch.setattr(stage, "sweep_temporaries", lambda: 0)
    ran = []
    stage.run(lambda: ran.append(True))
    assert ran == [True]


@pytest.fixture
def exits(monkeypatch):
    """os._exit recorded instead of done; Python's streams left alone."""
    codes = []
    monkeypatch.setattr(os, "_exit", codes.append)
    return codes


def test_the_fast_exit_flushes_c_streams_first(monkeypatch, libc, exits):
    monkeypatch.setattr(sys, "platform", "linux")
    END_PROCESS()
    assert libc == [("fflush", (None,))] and exits == [0]


@pytest.mark.parametrize("platform, library", [("win32", None), ("linux", OSError("no libc"))])
def test_without_a_reachable_c_library_the_interpreter_ends_normally(monkeypatch, exits, platform, library):
    """C streams that cannot be flushed are left to the interpreter's teardown, not lost by os._exit."""
    monkeypatch.setattr(sys, "platform", platform)

    def cdll(*args, **kwargs):
        raise library or AssertionError("CDLL called on Windows")

    monkeypatch.setattr(ctypes, "CDLL", cdll)
    END_PROCESS()
    assert exits == []


def mac(monkeypatch, mps: bool = True):
    """torch as on an Apple-silicon Mac: no CUDA, mps available or not."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def test_auto_picks_the_apple_gpu_and_mps_without_one_is_one_line(monkeypatch):
    mac(monkeypatch)
    assert runtime.pick_device("auto").type == "mps" and runtime.pick_device("mps").type == "mps"
    assert runtime.pick_device("cpu").type == "cpu"
    mac(monkeypatch, mps=False)
    assert runtime.pick_device("auto").type == "cpu"
    with pytest.raises(CnnlabError, match="train.device is 'mps' but no mps device is available"):
        runtime.pick_device("mps")


def test_precision_on_mps_is_fp32_unless_asked():
    """auto keeps fp32 on an Apple GPU (only CUDA and bf16-capable CPUs default to lower precision);
    bf16 and fp16 are autocast on mps as asked (torch 2.14's macOS wheels need macOS 14, which has bf16)."""
    mps = torch.device("mps")
    assert autocast_dtype("auto", mps) is None and autocast_dtype("fp32", mps) is None
    assert autocast_dtype("bf16", mps) is torch.bfloat16 and autocast_dtype("fp16", mps) is torch.float16


def test_the_apple_gpu_is_named_by_its_chip(monkeypatch):
    def no_proc(path, *args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", path)

    def sysctl(command, **kwargs):
        assert command == ["sysctl", "-n", "machdep.cpu.brand_string"]
        return subprocess.CompletedProcess(command, 0, "Apple M2 Pro\n", "")

    monkeypatch.setattr(runtime, "open", no_proc, raising=False)
    monkeypatch.setattr(runtime.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(runtime.platform, "processor", lambda: "arm")
    monkeypatch.setattr(subprocess, "run", sysctl)
    assert runtime.device_name(torch.device("mps")) == "Apple M2 Pro GPU (mps)"
    assert runtime.device_name(torch.device("cpu")) == "Apple M2 Pro"
    monkeypatch.setattr(runtime.platform, "system", lambda: "Windows")
    monkeypatch.setattr(runtime.platform, "processor", lambda: "Intel64 Family 6 Model 154, GenuineIntel")
    assert runtime.device_name(torch.device("cpu")) == "Intel64 Family 6 Model 154, GenuineIntel"


def test_a_commit_where_there_is_no_sigterm(tmp_path, monkeypatch):
    """Holding signals back during a commit needs no POSIX call (no pthread_sigmask, which Windows
    lacks): a platform without SIGTERM holds back Ctrl-C alone, and puts its handler back."""
    from cnnlab.plumbing.outputs import StagedOutputs
    monkeypatch.delattr(signal, "SIGTERM")
    before = signal.getsignal(signal.SIGINT)
    (tmp_path / "old.txt").write_text("old")
    staged = StagedOutputs()
    staged.text(tmp_path / "old.txt", "new")
    staged.commit()
    assert (tmp_path / "old.txt").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["old.txt"]
    assert signal.getsignal(signal.SIGINT) is before
