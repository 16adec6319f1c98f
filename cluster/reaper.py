"""Ends an embedded Ray's processes when the driver that started them is gone.

Ray ties its GCS, raylet and dashboard to the driver (they get a parent-death
signal), but not all of theirs: after a SIGKILLed driver the raylet's
dashboard and runtime-env agents notice their parent died and then hang
trying to tell the dead GCS, for minutes. ``ray_env.connect`` therefore starts
this watchdog next to an embedded Ray, in a session of its own (so a Ctrl-C
meant for the driver does not reach it), holding the read end of a pipe whose
write end only the driver has. It tracks the processes Ray started (the PIDs
given on the command line, and every descendant of those it sees, with their
start times so a reused PID is never hit) and, when the pipe closes - a clean
``shutdown`` or the driver's death alike - gives them a moment to exit and
kills what is left. It never touches the driver's other children.

Run as a script (stdlib and psutil only), so it needs nothing importable.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

import psutil

GRACE_S = 3.0


def _track(tracked: dict[int, float]) -> None:
    """Add every live descendant of a tracked process (pid -> create time)."""
    for pid, started in list(tracked.items()):
        try:
            proc = psutil.Process(pid)
            if proc.create_time() != started:
                continue
            for child in proc.children(recursive=True):
                tracked.setdefault(child.pid, child.create_time())
        except psutil.Error:
            continue


def _alive(tracked: dict[int, float]) -> list[psutil.Process]:
    out = []
    for pid, started in tracked.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == started and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:
            continue
    return out


def _end(tracked: dict[int, float]) -> None:
    deadline = time.monotonic() + GRACE_S
    while _alive(tracked) and time.monotonic() < deadline:
        _track(tracked)
        time.sleep(0.2)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in _alive(tracked):
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
        psutil.wait_procs(_alive(tracked), timeout=2.0)


def main(pids: list[int]) -> None:
    tracked: dict[int, float] = {}
    for pid in pids:
        try:
            tracked[pid] = psutil.Process(pid).create_time()
        except psutil.Error:
            continue
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        _track(tracked)
        ready, _, _ = select.select([sys.stdin], [], [], 1.0)
        if ready and not os.read(sys.stdin.fileno(), 64):
            break  # the driver closed the pipe or died
    _end(tracked)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]])
