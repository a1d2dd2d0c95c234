"""What a run could not hand to an unreachable tracking server (metrics, tags, files, its checkpoint, its
end): kept on disk in order and delivered when the server answers again, or by `bench sync RUN_ID`. An
outage then costs no training and loses nothing.

Each process that tracks a run has a queue file of its own (its incarnation), appended to and fsynced item
by item, never rewritten; a sidecar counts the lines already handled, so an item leaves the queue only once
delivered. A later process of the run delivers the queues earlier ones left before it holds the run, so an
old `end` can never land in a run that trains again. A line that cannot be read (torn by a kill) or an item
the server refuses (its file gone, a 4xx) goes to dead-letter.jsonl with one warning; the rest is delivered.
Re-sent metric rows after a kill between delivery and count are dropped by MLflow's store as duplicates
(its primary key is the whole row, timestamp included)."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmark.atomic import write_failed, write_text

log = logging.getLogger(__name__)

RETRY_SECONDS = 15.0  # while the server is away, try it again at most this often (each try waits on timeouts)
_SIGNS = ("Max retries exceeded", "Connection refused", "Failed to establish", "Connection aborted",
          "Connection reset", "RemoteDisconnected", "Read timed out", "Name or service not known")
DEAD_LETTER = "dead-letter.jsonl"


def unreachable(err: BaseException) -> bool:
    """The server did not answer (as opposed to answering with an error, which is a real failure)."""
    return isinstance(err, ConnectionError) or any(sign in str(err) for sign in _SIGNS)


@dataclass
class Tally:
    """What one delivery pass did: items delivered, set aside as undeliverable, torn lines skipped, left."""

    delivered: int = 0
    dead: int = 0
    torn: int = 0
    left: int = 0

    def add(self, other: Tally) -> None:
        self.delivered += other.delivered
        self.dead += other.dead
        self.torn += other.torn
        self.left += other.left


class Queue:
    """One incarnation's queue file: lines appended and fsynced; `<name>.sent` counts the lines handled."""

    def __init__(self, path: Path):
        self.path = path
        self.sent_path = path.with_suffix(".sent")

    def append(self, item: dict) -> None:
        line = json.dumps(item) + "\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            raise write_failed(self.path, err) from None

    def handled(self) -> int:
        try:
            return int(self.sent_path.read_text())
        except (OSError, ValueError):
            return 0

    def pending(self) -> list[tuple[int, dict | str]]:
        """(line index, item) of the lines not handled yet; a line that is not JSON is kept as its text."""
        if not self.path.is_file():
            return []
        out: list[tuple[int, dict | str]] = []
        lines = self.path.read_bytes().split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        handled = self.handled()
        for index, raw in enumerate(lines[handled:], start=handled):
            text = raw.decode(errors="replace")
            try:
                item = json.loads(text)
                out.append((index, item if isinstance(item, dict) and "kind" in item else text))
            except json.JSONDecodeError:
                out.append((index, text))
        return out

    def mark(self, handled: int) -> None:
        write_text(self.sent_path, str(handled))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.sent_path.unlink(missing_ok=True)


class Outbox:
    """The queues of one run on this machine, in `folder`: this process's own, and any earlier ones left."""

    def __init__(self, folder: Path, deliver: Callable[[dict], None]):
        self.folder, self.deliver = folder, deliver
        folder.mkdir(parents=True, exist_ok=True)
        # sorted by name is sorted by start time: earlier processes' queues are delivered first
        self.own = Queue(folder / f"{time.time_ns():020d}-{socket.gethostname()}-{os.getpid()}.jsonl")
        self._waiting = 0  # this process's items not delivered yet
        self._last_try = 0.0

    def __len__(self) -> int:
        return self._waiting

    def earlier(self) -> list[Queue]:
        return [Queue(p) for p in sorted(self.folder.glob("*.jsonl")) if p.name not in (self.own.path.name,
                                                                                         DEAD_LETTER)]

    def send(self, item: dict) -> None:
        """Deliver now, or keep it (after whatever waits already: the order is the server's history)."""
        if self._waiting and time.monotonic() - self._last_try >= RETRY_SECONDS:
            self.drain()
        if not self._waiting:
            try:
                self.deliver(item)
                return
            except Exception as err:  # noqa: BLE001 - an unreachable server keeps it, a refusal sets it aside
                if not unreachable(err):
                    self._dead(item, err)
                    return
                self._last_try = time.monotonic()
                log.warning("tracking server unreachable (%s); training goes on, and what it logs waits in %s "
                            "until the server is back (or bench sync)", str(err).splitlines()[0][:120], self.folder)
        self.own.append(item)
        self._waiting += 1

    def drain(self) -> bool:
        """Deliver what this process keeps waiting, in order; True when nothing is left."""
        self._last_try = time.monotonic()
        tally = self._deliver_queue(self.own)
        self._waiting = tally.left
        if tally.delivered:
            log.info("tracking server back: delivered %d waiting item(s), %d left", tally.delivered, tally.left)
        return not tally.left

    def deliver_earlier(self) -> Tally:
        """Deliver the queues earlier processes of this run left, oldest first; stops at the first item the
        server does not take because it is away (what follows waits behind it)."""
        total = Tally()
        for queue in self.earlier():
            tally = self._deliver_queue(queue)
            total.add(tally)
            if tally.left:
                total.left += sum(len(q.pending()) for q in self.earlier() if q.path.name > queue.path.name)
                break
        return total

    def _deliver_queue(self, queue: Queue) -> Tally:
        tally = Tally()
        pending = queue.pending()
        if not pending:
            queue.remove()
            return tally
        # only the newest checkpoint is worth an upload: an earlier one is superseded, not lost
        newest = max((i for i, item in pending if isinstance(item, dict) and item["kind"] == "checkpoint"),
                     default=None)
        for position, (index, item) in enumerate(pending):
            if isinstance(item, str):
                tally.torn += 1
                self._dead(item, None, queue)
            elif item["kind"] == "checkpoint" and index != newest:
                continue  # superseded: no count of its own (a kill here only skips it again)
            else:
                try:
                    self.deliver(item)
                except Exception as err:  # noqa: BLE001
                    if unreachable(err):
                        tally.left = len(pending) - position
                        return tally
                    tally.dead += 1
                    self._dead(item, err, queue)
                else:
                    tally.delivered += 1
            queue.mark(index + 1)
        queue.remove()
        return tally

    def _dead(self, item: dict | str, err: BaseException | None, queue: Queue | None = None) -> None:
        """An item that can never be delivered, kept for a person to look at; one warning."""
        where = self.folder / DEAD_LETTER
        reason = "a damaged line (torn by a kill?)" if err is None else \
            f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"
        Queue(where).append({"item": item, "reason": reason, "queue": queue.path.name if queue else "direct"})
        what = item.get("kind", "?") if isinstance(item, dict) else "line"
        log.warning("tracking: a %s item could not be delivered (%s); kept in %s, the rest goes on", what, reason,
                    where)
