"""The stage process: what every stage script (and `python -m cnnlab.predict`) shares around its
own work. `run` is its entry point: the command line, SIGTERM and the parent's death as an
interruption, user errors as one line and exit code 1, the timing record benchmarks/pipeline.py
reads, and, under torchrun, a failing rank's line for the launcher and rank 0's outputs handed over
to it. What a stage writes is staged by cnnlab.plumbing.outputs; `outputs()` says whether the staged
files are committed here or handed over.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from cnnlab import CnnlabError
from cnnlab.plumbing import PARENT_AT_START, torchrun
from cnnlab.plumbing.outputs import StagedOutputs, sweep_temporaries
from cnnlab.plumbing.timing import record_timings, timed



@contextmanager
def outputs() -> Iterator[StagedOutputs]:
    """Stage this process's outputs; put them in place if the block ends well, discard them if not.
    A rank under torchrun.launch hands them over instead: the launcher commits them once every
    rank has ended well."""
    lead = torchrun.launcher()
    staged = StagedOutputs(lead[0] if lead else None)
    with timed("write"):
        try:
            yield staged
        except RuntimeError as err:  # torch.save on a full disk: "PytorchStreamWriter failed writing file"
            staged.discard()
            if "PytorchStreamWriter" in str(err) or "unexpected pos" in str(err):
                raise OSError(errno.ENOSPC, "could not write a checkpoint (is the disk full?)",
                              str(staged.last_target or "a checkpoint")) from None
            raise
        except OSError as err:  # named by the output it was for, not its hidden temporary
            target = staged.target_of(err.filename)
            staged.discard()
            raise OSError(err.errno, err.strerror, target) from None
        except BaseException:
            staged.discard()
            raise
        if lead:
            staged.hand_over(lead[1])
        else:
            staged.commit()



FIXES = {
    errno.ENOSPC: "free some space (dvc gc -w removes cache entries no longer used) and rerun",
    errno.EDQUOT: "free some space within your quota and rerun",
    errno.EACCES: "make it writable (or readable) for this user, or work in a copy you own",
    errno.EPERM: "make it writable (or readable) for this user, or work in a copy you own",
    errno.EROFS: "the disk is mounted read-only: work in a copy on a writable disk",
    errno.EEXIST: "remove it or choose another name",
    errno.ENOTDIR: "a file stands where a folder is needed: move it away",
    errno.EISDIR: "a folder stands where a file is needed: move it away",
    errno.ENOENT: "check the path (run from the project root; dvc repro rebuilds missing outputs)",
}


def file_problem(err: OSError) -> str:
    """One line for an OSError: the file, the cause, the fix."""
    where = err.filename2 or err.filename or "a file"  # a rename names its target: not a temporary
    cause = err.strerror or type(err).__name__
    fix = FIXES.get(err.errno, "check the path, its permissions and the free space")
    return f"{where}: {cause}; {fix}"


INTERRUPTS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))


def _interrupted(signum, frame):
    """SIGTERM (dvc, a scheduler) cleans up exactly as Ctrl-C does. The first one is enough: a
    SIGTERM sent to the process group reaches a stage twice (from the sender, then from dvc or
    the parent's death), and the second must not break the clean-up the first started."""
    for interrupt in INTERRUPTS:
        signal.signal(interrupt, signal.SIG_IGN)
    raise KeyboardInterrupt


def _end_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies: `dvc repro` killed with SIGTERM
    exits at once without stopping the stage it runs, which would then finish and write outputs
    that no dvc.lock records. A parent that is init from the start (a container's, a scheduler's)
    is a parent like any other."""
    if sys.platform.startswith("linux"):  # elsewhere there is no prctl (on Windows, no CDLL(None) either)
        try:
            import ctypes
            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):  # a C library without prctl
            pass
    if os.getppid() != PARENT_AT_START:  # it died before we asked: we were handed to init
        raise KeyboardInterrupt


def _check_checkout() -> None:
    """Refuse to run another checkout's code: a venv shared between two clones imports cnnlab from
    the one its editable install points at, and dvc.lock would record results of code that never
    ran. A stage runs in its checkout's root; an identical copy of the code (a test's) is the same."""
    here = Path("src/cnnlab").resolve()
    imported = Path(sys.modules["cnnlab"].__file__).resolve().parent
    if not (here / "__init__.py").is_file() or here == imported or _same_code(here, imported):
        return
    raise CnnlabError(f"this stage would run the cnnlab code in {imported}, not this checkout's {here} "
                      f"(a virtual environment shared with another clone?); run `pip install -e .` here, "
                      f"or `export PYTHONPATH=$PWD/src`, and rerun")


def _same_code(one: Path, other: Path) -> bool:
    def sources(root: Path) -> dict[str, bytes]:
        return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*.py")}
    return sources(one) == sources(other)


def run(main, sweep: bool = True) -> None:
    """Entry point of every stage script (and of `python -m cnnlab.predict`, which sweeps nothing):
    user errors become one line on stderr and exit code 1. When `main` is the script Python runs
    (`_is_the_script`), the process ends as soon as it returns, its outputs in place."""
    previous = {interrupt: signal.signal(interrupt, _interrupted) for interrupt in INTERRUPTS}
    started = time.perf_counter()
    try:
        _end_with_parent()
        if sweep:  # a pipeline stage, run in its checkout (predict runs anywhere and sweeps nothing)
            _check_checkout()
            if sys.platform != "win32":  # it probes pids with os.kill(pid, 0): Ctrl-C on Windows
                sweep_temporaries()
        main()
        record_timings(started)
    except (CnnlabError, OSError) as err:  # OSError: a file that cannot be read or written
        message = str(err) if isinstance(err, CnnlabError) else file_problem(err)
        torchrun.record_rank_failure(CnnlabError(message))
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # a bug, or a peer rank gone: the traceback stays, and the launcher gets a line
        torchrun.record_rank_failure(err)
        raise
    finally:
        if not _is_the_script(main):  # a test or a notebook gets its own handlers back
            for interrupt, handler in previous.items():
                if handler is not None:  # None: set outside Python, cannot be put back
                    signal.signal(interrupt, handler)
    if _is_the_script(main):
        _end_process()


def _is_the_script(main) -> bool:
    """Whether `main` is the script Python was asked to run (`python stages/train.py`, `python -m
    cnnlab.predict`) with nothing watching it: not a test, a notebook or `python -i`, nor under a
    profiler, debugger or coverage, which all need the process after the script returns."""
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    return (main.__module__ == "__main__" and script is not None
            and os.path.abspath(script) == os.path.abspath(main.__code__.co_filename)
            and sys.gettrace() is None and sys.getprofile() is None and not sys.flags.interactive)


def _end_process() -> None:
    """End a stage process whose outputs are committed without the interpreter's teardown (freeing torch
    module by module is a visible share of a short stage). What teardown would still do is done here:
    flush Python's and C's streams, remove matplotlib's temporary settings folder."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (`| head`), a closed stream
            pass
    if not _flush_c_streams():
        return  # the interpreter's teardown flushes them
    if "matplotlib" in sys.modules:
        import shutil
        import tempfile
        settings = Path(sys.modules["matplotlib"].get_configdir())
        if settings.parent == Path(tempfile.gettempdir()) and settings.name.startswith("matplotlib-"):
            shutil.rmtree(settings, ignore_errors=True)
    os._exit(0)


def _flush_c_streams() -> bool:
    """Flush what C libraries printed into a buffer; False where ctypes cannot reach the C library
    (Windows: CDLL(None) is a TypeError, and each DLL may have a C runtime of its own)."""
    if sys.platform == "win32":
        return False
    try:
        import ctypes
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):
        return False
    return True
