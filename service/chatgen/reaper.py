"""No process `chatgen serve` started outlives it.

vLLM's engine core runs in a child process with children of its own (a `VLLM::Worker`, multiprocessing's
resource tracker). When the engine core dies hard (SIGKILL, the OOM killer), its children are orphaned: without
a PID namespace they are re-parented to init and keep running, ≈ 1 GB each, after chatgen exits. As a child
subreaper (Linux's PR_SET_CHILD_SUBREAPER) this process inherits its orphaned descendants instead, and at exit
it ends whatever is left of its tree: SIGTERM, then SIGKILL for those that do not go, then it reaps them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the parent of its orphaned descendants; False where the OS has no such thing."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def children(pid: int) -> list[int]:
    """The direct children of `pid`, from /proc (every thread's list: a child belongs to the thread that forked)."""
    found: list[int] = []
    for tasks in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in tasks.read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = children(pid)
    while todo:
        child = todo.pop()
        out.append(child)
        todo += children(child)
    return out


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent to collect it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _reap(pids: list[int]) -> None:
    """Collect those of `pids` that have exited and that nothing else here will: orphans re-parented to this
    process. Children that multiprocessing started are left to it (it waits for them at exit, and would wait
    forever for one collected under it)."""
    import multiprocessing

    owned = {child.pid for child in multiprocessing.active_children()}
    for pid in pids:
        if pid not in owned:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def _own_resource_tracker() -> int | None:
    """multiprocessing's resource tracker of this process: it exits by itself when this process does (its pipe
    closes) and cleans up after it; ended early, it could not."""
    from multiprocessing import resource_tracker

    return getattr(resource_tracker._resource_tracker, "_pid", None)


def _leftovers() -> list[int]:
    keep = _own_resource_tracker()
    return [pid for pid in descendants(os.getpid()) if pid != keep and _alive(pid)]


def _signal_until_gone(pids: list[int], sig: signal.Signals, timeout: float) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(children(os.getpid()))
        if not _leftovers():
            return
        time.sleep(0.05)


def end_descendants(timeout: float = 5.0) -> list[int]:
    """SIGTERM every process still running below this one, SIGKILL those still there after `timeout`, collect
    the orphans among them. Returns the pids that had to be ended."""
    left = _leftovers()
    if left:
        _signal_until_gone(left, signal.SIGTERM, timeout)
    if _leftovers():
        _signal_until_gone(_leftovers(), signal.SIGKILL, timeout)
    return left
