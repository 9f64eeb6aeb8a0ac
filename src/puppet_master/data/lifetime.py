"""Worker processes that end with the process that started them.

A dataset build runs asset workers (a process pool) and, under them, one Blender Python
per asset. If the build's main process is killed (SIGKILL, an out-of-memory kill, a
closed terminal), those children would otherwise keep rendering for minutes, and the
pool's resource tracker with them. Two mechanisms stop them:

* on Linux, ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: the kernel sends the child SIGTERM
  when its parent dies;
* elsewhere, and as a check for a parent that died before the call, a daemon thread
  that exits the process once its parent process id changes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies; ``False`` where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def exit_with_parent(parent_pid: int, poll_seconds: float = 1.0) -> None:
    """Make this (worker) process exit when ``parent_pid`` dies.

    Call it first thing in a worker (e.g. as a process pool's ``initializer``).
    """
    _set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def child_dies_with_parent() -> None:
    """``preexec_fn`` for :func:`subprocess.run`: the child gets SIGTERM when the calling process dies.

    (Linux sends the signal when the *thread* that started the child ends; ``run``
    waits for the child in that thread, so this is the process's lifetime here.)
    """
    _set_parent_death_signal()
