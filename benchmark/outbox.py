"""What a run could not hand to an unreachable tracking server (metrics, tags, files, its checkpoint, its
end): kept on disk in order and delivered when the server answers again, or by `bench sync RUN_ID`. An
outage then costs no training and loses nothing; re-sent metric rows are dropped by MLflow's store as
duplicates (its primary key is the whole row), so nothing is logged twice either."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

RETRY_SECONDS = 15.0  # while the server is away, try it again at most this often (each try waits on timeouts)
_SIGNS = ("Max retries exceeded", "Connection refused", "Failed to establish", "Connection aborted",
          "Connection reset", "RemoteDisconnected", "Read timed out", "Name or service not known")


def unreachable(err: BaseException) -> bool:
    """The server did not answer (as opposed to answering with an error, which is a real failure)."""
    return isinstance(err, ConnectionError) or any(sign in str(err) for sign in _SIGNS)


class Outbox:
    def __init__(self, path: Path, deliver: Callable[[dict], None]):
        self.path, self.deliver = path, deliver
        self.items: list[dict] = self._read()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._last_try = 0.0

    def __len__(self) -> int:
        return len(self.items)

    def send(self, item: dict) -> None:
        """Deliver now, or keep it (after whatever waits already: the order is the server's history)."""
        if item["kind"] == "checkpoint":  # only the newest checkpoint is worth an upload
            self.items = [i for i in self.items if i["kind"] != "checkpoint"]
        if self.items and time.monotonic() - self._last_try >= RETRY_SECONDS:
            self.drain()
        if not self.items:
            try:
                self.deliver(item)
                return
            except Exception as err:  # noqa: BLE001 - only an unreachable server is kept for later
                if not unreachable(err):
                    raise
                self._last_try = time.monotonic()
                log.warning("tracking server unreachable (%s); training goes on, and what it logs waits in %s "
                            "until the server is back (or bench sync)", str(err).splitlines()[0][:120], self.path)
        self.items.append(item)
        self._write()

    def drain(self) -> bool:
        """Deliver what waits, in order; True when nothing is left."""
        self._last_try = time.monotonic()
        delivered = 0
        try:
            while self.items:
                try:
                    self.deliver(self.items[0])
                except Exception as err:  # noqa: BLE001
                    if not unreachable(err):
                        raise
                    return False
                self.items.pop(0)
                delivered += 1
        finally:
            if delivered:
                self._write()
                log.info("tracking server back: delivered %d waiting item(s), %d left", delivered, len(self.items))
        return True

    def _read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def _write(self) -> None:
        if not self.items:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".partial")
        tmp.write_text("".join(json.dumps(item) + "\n" for item in self.items))
        os.replace(tmp, self.path)
