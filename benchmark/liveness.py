"""Who holds a run or a trial ("host pid N since T") and whether that process still lives. On this machine it
lives while a process with that pid *and* that start time runs (a pid is reused once its process is gone);
another machine's process cannot be seen from here, so its heartbeat speaks for it."""

from __future__ import annotations

import re
import socket

import psutil

_HOLDER = re.compile(r"^(?P<host>.+) pid (?P<pid>\d+) since (?P<since>\d+)")


def me() -> str:
    proc = psutil.Process()
    return f"{socket.gethostname()} pid {proc.pid} since {proc.create_time():.0f}"


def alive(holder: str) -> bool:
    """False only for a holder of this machine whose process is gone; True for another machine's."""
    found = _HOLDER.match(holder)
    if found is None:
        return False  # not written by this program: nobody holds it
    if found["host"] != socket.gethostname():
        return True
    try:
        return f"{psutil.Process(int(found['pid'])).create_time():.0f}" == found["since"]
    except psutil.NoSuchProcess:
        return False
