"""chatgen.reaper: orphans re-parented to a subreaper, and ended at its exit. Run in a child interpreter, so the
test process itself never becomes a subreaper."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import psutil

SCRIPT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from chatgen import reaper

    assert reaper.become_subreaper()
    # A child that starts a grandchild and dies at once, as a killed engine core leaves its worker.
    subprocess.run(["sh", "-c", "sleep 300 & echo $!"], stdout=open("orphan.pid", "w"), check=True)
    orphan = int(open("orphan.pid").read())
    assert orphan in reaper.children(os.getpid()), "the orphan was re-parented here"
    # And one that ignores SIGTERM, to be killed, with a child of its own.
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 300; sleep 1"])
    time.sleep(0.2)
    ended = reaper.end_descendants(timeout=1.0)
    print({orphan, stubborn.pid} <= set(ended), *ended)
    """
)


def test_orphans_come_here_and_every_descendant_is_ended(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert out[0] == "True", out
    for pid in map(int, out[1:]):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
