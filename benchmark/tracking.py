"""MLflow: the run's lifecycle, params, tags, batched metrics, files, and resuming into the same run."""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import platform
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import torch
from mlflow.entities import Metric, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from benchmark import checkpoint
from benchmark.data import cache_root
from benchmark.errors import UserError, did_you_mean
from benchmark.filelock import file_lock
from benchmark.liveness import alive, me
from benchmark.outbox import DEAD_LETTER, Outbox, Tally, unreachable
from benchmark.redact import masked

log = logging.getLogger(__name__)

HEARTBEAT_STALE = 120.0  # seconds without a heartbeat after which a remote run's holder counts as gone
CLAIM_SETTLE = 2.0  # seconds a remote claim waits before reading itself back: far longer than check-then-write
# On a remote store the checkpoint alternates between two slots; the pointer names the complete one.
REMOTE_CHECKPOINTS = "checkpoints/remote"
REMOTE_POINTER = f"{REMOTE_CHECKPOINTS}/latest.json"


def end_if_running(run_id: str, reason: str) -> bool:
    """Mark FAILED, with its reason, a run whose process died before it could end it (True if it did); a run
    that ended stays as it is. Best effort: an unreachable store leaves it RUNNING, and the caller's error line
    still names it."""
    client = MlflowClient()
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return False
        client.set_tag(run_id, "failure_reason", reason)
        client.set_terminated(run_id, status="FAILED")
        return True
    except MlflowException as err:
        log.warning("run %s could not be marked FAILED: %s", run_id, str(err).splitlines()[0][:200])
        return False


def use_tracking_uri(uri: str | None, check: bool = True) -> str:
    """Point MLflow at uri; with none, MLflow's own default (mlflow.db + ./mlruns in the working dir). With
    check, an unusable store is one line now, before anything is prepared or trained."""
    if uri:
        mlflow.set_tracking_uri(uri)
    uri = mlflow.get_tracking_uri()
    if check:
        check_store(uri)
    return uri


def check_store(uri: str, timeout: float = 5.0) -> None:
    """A server that answers within `timeout` seconds (MLflow's own client retries for minutes), or a SQLite
    file / folder store that is a database and can be written."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        bare = parsed._replace(netloc=parsed.netloc.rpartition("@")[2])  # urllib takes no user:password@ in a URL
        request = urllib.request.Request(f"{bare.geturl().rstrip('/')}/health")
        if parsed.username is not None:
            token = base64.b64encode(f"{unquote(parsed.username)}:{unquote(parsed.password or '')}".encode())
            request.add_header("Authorization", f"Basic {token.decode()}")
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                return
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise UserError(f"MLflow tracking server {masked(uri)} does not answer ({reason}); start it, or give "
                            "another --tracking-uri / MLFLOW_TRACKING_URI") from None
    if parsed.scheme == "sqlite":
        path = Path(unquote(parsed.path)[1:])  # sqlite:///rel.db is relative, sqlite:////abs.db absolute
        _check_sqlite(path)
        # Processes that open a new store at once each run MLflow's schema migrations on it, and all but one die
        # ("table ... already exists"): the first creates it while the others wait. MLflow keeps the store it
        # opened here for the rest of the process.
        with file_lock(path.with_name(f".{path.name}.lock")):
            MlflowClient(uri).search_experiments(max_results=1)
    elif parsed.scheme in ("", "file"):
        folder = Path(unquote(parsed.path))
        if folder.exists() and not os.access(folder, os.W_OK):
            raise UserError(f"MLflow store {folder} is read-only; give a writable --tracking-uri")


def _check_sqlite(path: Path) -> None:
    import sqlite3

    if not path.exists():
        if not os.access(path.parent if path.parent.exists() else Path.cwd(), os.W_OK):
            raise UserError(f"MLflow store {path} cannot be created: its folder is read-only")
        return
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
            db.execute("select count(*) from sqlite_master").fetchone()
    except sqlite3.DatabaseError as err:
        raise UserError(f"MLflow store {path} is not a usable SQLite database ({err})") from None
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        raise UserError(f"MLflow store {path} is read-only (it needs the file and its folder writable); give a "
                        "writable --tracking-uri")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


class Tracker:
    """One MLflow run. Files are written into `dir`; on a local store that is the artifact folder itself."""

    def __init__(self, run_id: str):
        self.client = MlflowClient()
        self.run_id = run_id
        run = self.client.get_run(run_id)
        self.experiment_id = run.info.experiment_id
        local = local_path(run.info.artifact_uri)
        self.remote_artifacts = local is None
        self.dir = local if local is not None else cache_root() / "runs" / run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self._pending: list[Metric] = []
        self._stored: dict[str, int] = {}  # a resumed run: the last step the store holds per metric key
        self._last_flush = time.monotonic()
        self._latest_slot: str | None = None  # remote checkpoint slot named by the pointer
        # A tracking server can go away mid-run: what cannot be delivered waits on disk, in order
        remote = urlparse(mlflow.get_tracking_uri()).scheme in ("http", "https")
        self.outbox = Outbox(cache_root() / "runs" / run_id / "outbox", self._deliver) if remote else None

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, experiment_name: str, run_name: str | None, params: dict, tags: dict) -> Tracker:
        client = MlflowClient()
        experiment_id = ensure_experiment(client, experiment_name)
        run = client.create_run(experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()})
        tracker = cls(run.info.run_id)
        params = {k: str(v) for k, v in params.items()}
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in items[i : i + 100]])
        return tracker

    @classmethod
    def open(cls, run_id: str) -> Tracker:
        """An existing run, as it is (its status changes only when it is resumed)."""
        if not run_id or not run_id.strip():
            raise UserError("an empty run id; give the id of an MLflow run (bench run --resume RUN_ID)")
        try:
            return cls(run_id)
        except MlflowException:
            raise UserError(f"no MLflow run {run_id!r} in {mlflow.get_tracking_uri()}") from None

    def mark_resumed(self) -> None:
        """RUNNING again, one more resume counted; an earlier failure's reason is kept as history."""
        tags = self.client.get_run(self.run_id).data.tags
        self.client.update_run(self.run_id, status="RUNNING")
        self.client.set_tag(self.run_id, "resumed", str(int(tags.get("resumed", "0")) + 1))
        if "failure_reason" in tags:
            self.client.set_tag(self.run_id, "previous_failure_reason", tags["failure_reason"])
            self.client.delete_tag(self.run_id, "failure_reason")

    def end(self, status: str, reason: str | None = None) -> bool:
        """End the run with status (and reason); False when the server is away and the end waits on disk."""
        self.flush()
        self._send({"kind": "end", "status": status, "reason": reason})
        if self.outbox and not self.outbox.drain():
            log.warning("the tracking server is still unreachable: %d item(s) of run %s wait in %s; bench sync %s "
                        "delivers them", len(self.outbox), self.run_id, self.outbox.folder, self.run_id)
            return False
        return True

    def _end_now(self, status: str, reason: str | None) -> None:
        if reason:
            self.client.set_tag(self.run_id, "failure_reason", reason[:5000])
        self.client.set_terminated(self.run_id, status=RunStatus.to_string(RunStatus.from_string(status)))
        if self.remote_artifacts:  # released after the end, never before: a RUNNING run is never free to claim
            self.client.set_tag(self.run_id, "lock.heartbeat", "0")  # another machine may resume it

    # ------------------------------------------------------------ delivery (now, or once the server is back)

    def _send(self, item: dict) -> None:
        if self.outbox is None:
            self._deliver(item)
        else:
            self.outbox.send(item)

    def _deliver(self, item: dict) -> None:
        kind = item["kind"]
        if kind == "metrics":
            rows = [Metric(k, v, ts, step) for k, v, ts, step in item["rows"]]
            for i in range(0, len(rows), 1000):
                self.client.log_batch(self.run_id, metrics=rows[i : i + 1000])
        elif kind == "tags":
            for key, value in item["values"].items():
                self.client.set_tag(self.run_id, key, value)
        elif kind == "artifact":
            path = item["path"]
            self.client.log_artifact(self.run_id, str(self.dir / path), str(Path(path).parent) if "/" in path else None)
        elif kind == "image":
            self._log_image(item["key"], self.dir / item["path"], item["step"])
        elif kind == "checkpoint":
            self._upload_checkpoint()
        elif kind == "end":
            self._end_now(item["status"], item["reason"])
        else:
            raise ValueError(f"unknown outbox item {kind!r}")

    def sync(self) -> Tally:
        """Deliver what earlier processes of this run left waiting on this machine (bench sync). A process
        training the run delivers its own: sync then leaves it alone."""
        if self.outbox is None:
            return Tally()
        with self._local_lock("it delivers what it keeps waiting itself"):
            return self.outbox.deliver_earlier()

    # ------------------------------------------------------------ one process per run

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Only one process trains a run: a lock beside its checkpoint (processes of this machine) and, on a
        remote store, a holder tag with a heartbeat (other machines). The second gets one line. What an earlier
        process of the run left waiting for the server is delivered first: its end lands before this one's
        start, never after."""
        with self._local_lock("not starting a second"):
            self._deliver_earlier()
            if self.remote_artifacts:
                self._claim()
            yield

    @contextmanager
    def _local_lock(self, refusal: str) -> Iterator[None]:
        path = self.dir / "checkpoints" / "run.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                raise UserError(f"run {self.run_id} is being trained by another process ({f.read().strip()}); "
                                f"{refusal}") from None
            f.seek(0)
            f.truncate()
            f.write(me())
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def tidy(self) -> None:
        """A FINISHED run keeps its last checkpoint only (the one before it serves a resume, which a finished run
        never has) and no lock file."""
        checkpoint.previous(self.dir / checkpoint.LAST).unlink(missing_ok=True)
        (self.dir / "checkpoints" / "run.lock").unlink(missing_ok=True)

    def _deliver_earlier(self) -> Tally:
        """Hand the server what earlier processes of this run left on this machine, oldest first."""
        if self.outbox is None:
            return Tally()
        tally = self.outbox.deliver_earlier()
        if tally.delivered or tally.dead or tally.torn:
            log.info("delivered %d item(s) an earlier process of run %s left waiting%s", tally.delivered,
                     self.run_id, f"; {tally.dead + tally.torn} set aside in {self.outbox.folder / DEAD_LETTER}"
                     if tally.dead or tally.torn else "")
        if tally.left:
            raise UserError(f"the tracking server {mlflow.get_tracking_uri()} stopped answering while it was "
                            f"handed what an earlier process of run {self.run_id} left: {tally.left} item(s) "
                            f"still wait in {self.outbox.folder}; bench sync {self.run_id} once it is back")
        return tally

    def _claim(self) -> None:
        """A claim that two machines cannot both win: each writes its holder tag with a token of its own, waits
        longer than a check-then-write takes, and reads it back; only the last writer finds its own."""
        tags = self.client.get_run(self.run_id).data.tags
        holder, beat = tags.get("lock.holder", ""), float(tags.get("lock.heartbeat", "0"))
        mine = f"{me()} claim {uuid.uuid4().hex[:12]}"
        if holder and not holder.startswith(me()) and time.time() - beat < HEARTBEAT_STALE and alive(holder):
            raise UserError(f"run {self.run_id} is being trained by {_who(holder)} (heartbeat "
                            f"{time.time() - beat:.0f} s ago); not starting a second")
        self.client.set_tag(self.run_id, "lock.holder", mine)
        time.sleep(CLAIM_SETTLE)
        holder = self.client.get_run(self.run_id).data.tags.get("lock.holder", "")
        if holder != mine:
            raise UserError(f"run {self.run_id} was claimed by {_who(holder)} at the same moment; not starting "
                            "a second")
        self._beat(force=True)

    def _beat(self, force: bool = False) -> None:
        if self.remote_artifacts and (force or not self.outbox):  # skipped while things wait for the server
            try:
                self.client.set_tag(self.run_id, "lock.heartbeat", f"{time.time():.0f}")
            except MlflowException as err:
                if not unreachable(err):
                    raise

    # ------------------------------------------------------------ metrics and files

    def skip_stored(self) -> None:
        """A run resumed from its checkpoint replays, bit for bit, the steps between that checkpoint and the kill,
        whose rows the killed process may have flushed already: rows at steps the store holds are not sent
        again (MLflow would keep both, their timestamps differ)."""
        for key in self.client.get_run(self.run_id).data.metrics:
            self._stored[key] = max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=-1)

    def metric(self, key: str, value: float, step: int) -> None:
        if step <= self._stored.get(key, -1):
            return
        self._pending.append(Metric(key, float(value), int(time.time() * 1000), int(step)))

    def metrics(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.metric(key, value, step)

    def maybe_flush(self, every_seconds: float = 10.0) -> None:
        """One log call per step costs ~5 ms on SQLite, so metrics go out in batches."""
        if time.monotonic() - self._last_flush > every_seconds:
            self.flush()
            self._beat()

    def flush(self) -> None:
        if self._pending:
            rows = [[m.key, m.value, m.timestamp, m.step] for m in self._pending]
            self._send({"kind": "metrics", "rows": rows})
            self._pending = []  # delivered, or on disk in the outbox: not before
        self._last_flush = time.monotonic()

    def tags(self, values: dict) -> None:
        self._send({"kind": "tags", "values": {key: str(value) for key, value in values.items()}})

    def fetch(self, relpath: str) -> Path:
        """A run file's local path; on a remote store it is downloaded when it is not here (a run resumed on
        another machine). The checkpoint comes from the slot its pointer names, the other slot as the previous."""
        path = self.dir / relpath
        if not self.remote_artifacts or path.exists():
            return path
        if relpath == checkpoint.LAST:
            pointer = self._download(REMOTE_POINTER)
            if pointer is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                slots = json.loads(pointer.read_text())
                for slot, local in ((slots["other"], checkpoint.previous(path)), (slots["latest"], path)):
                    got = self._download(f"{REMOTE_CHECKPOINTS}/{slot}")
                    if got is not None:
                        os.replace(got, local)
                log.info("fetched the checkpoint of run %s from the tracking server", self.run_id)
            return path
        got = self._download(relpath)
        if got is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(got, path)
        return path

    def _download(self, relpath: str) -> Path | None:
        """One artifact into a scratch folder under `dir`; None where the run has no such artifact."""
        scratch = self.dir / ".download"
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            return Path(self.client.download_artifacts(self.run_id, relpath, str(scratch)))
        except (MlflowException, OSError) as err:
            if unreachable(err):  # not "no such artifact": the server is away
                raise
            return None

    def publish_checkpoint(self) -> None:
        """On a remote store, upload the checkpoint (now, or the newest one once the server is back)."""
        if self.remote_artifacts:
            self._send({"kind": "checkpoint"})

    def _upload_checkpoint(self) -> None:
        """To the slot not named by the pointer (a new name), then the pointer (the replace): a kill mid-upload
        leaves the pointed-to checkpoint whole."""
        if self._latest_slot is None:  # first upload of this process: the pointer may name a slot already
            pointer = self._download(REMOTE_POINTER)
            self._latest_slot = json.loads(pointer.read_text())["latest"] if pointer is not None else "b.pt"
        slot_name, other = ("b.pt", "a.pt") if self._latest_slot == "a.pt" else ("a.pt", "b.pt")
        staging = self.dir / ".upload"
        staging.mkdir(parents=True, exist_ok=True)
        slot = staging / slot_name
        slot.unlink(missing_ok=True)
        os.link(self.dir / checkpoint.LAST, slot)  # the artifact's name, without copying the file
        try:
            self.client.log_artifact(self.run_id, str(slot), REMOTE_CHECKPOINTS)
        finally:
            slot.unlink()
        pointer = staging / Path(REMOTE_POINTER).name
        pointer.write_text(json.dumps({"latest": slot_name, "other": other}))
        self.client.log_artifact(self.run_id, str(pointer), REMOTE_CHECKPOINTS)
        self._latest_slot = slot_name

    def publish(self, relpath: str) -> None:
        """Make a file under `dir` an artifact; on a local store it already is one."""
        if self.remote_artifacts:
            self._send({"kind": "artifact", "path": relpath})

    def image(self, key: str, path: Path, step: int) -> None:
        """A sample grid as an MLflow image at this step, so the run's images step through training. Once per
        step: a run killed after its eval point and resumed does not log the same step twice."""
        self._send({"kind": "image", "key": key, "path": str(path.relative_to(self.dir)), "step": step})

    def _log_image(self, key: str, path: Path, step: int) -> None:
        from PIL import Image

        stem = f"{key.replace('/', '~')}+step+{step}+"  # MLflow's file name for the key at this step
        if self.remote_artifacts:
            logged = [f.path for f in self.client.list_artifacts(self.run_id, "images")]
        else:
            logged = [f.name for f in (self.dir / "images").glob(f"{stem}*")]
        if any(Path(name).name.startswith(stem) for name in logged):
            return
        with Image.open(path) as img:
            self.client.log_image(self.run_id, img.convert("RGB"), key=key, step=step)

    def dataset(self, name: str, fingerprint: str, source: str, split: str, images: int, resolution: int) -> None:
        """The prepared data as the run's MLflow dataset input (the runs table's Dataset column)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        profile = {"num_images": images, "split": split, "resolution": resolution}
        dataset = Dataset(name=name, digest=fingerprint[:36], source_type="local",
                          source=json.dumps({"uri": source}), profile=json.dumps(profile))
        tags = [InputTag("mlflow.data.context", "train"), InputTag("split", split)]
        try:
            self.client.log_inputs(self.run_id, [DatasetInput(dataset, tags)])
        except MlflowException:  # the runs of a compare register the same data set at once: one wins, then
            time.sleep(1.0)       # this input links to its row
            self.client.log_inputs(self.run_id, [DatasetInput(dataset, tags)])

    def describe(self, text: str) -> None:
        """The run's description (the Overview page): what ran and, once scored, its headline number."""
        self.tags({"mlflow.note.content": text})

    @contextmanager
    def system_metrics(self, interval: float = 10.0) -> Iterator[None]:
        """CPU, memory, disk (and GPU) use under system/, sampled by MLflow's own monitor while training."""
        if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true").lower() == "false":
            yield
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval, resume_logging=True)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    def history(self, key: str) -> list[tuple[int, float]]:
        """A metric as the server has it, after handing it whatever waits (from an outage) and is pending."""
        self.flush()
        if self.outbox:
            self.outbox.drain()
        return [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)]


class Silent:
    """The tracker of data-parallel ranks other than 0: they train the same run, but rank 0 alone logs to MLflow,
    writes its checkpoint and scores evaluations. `dir` names rank 0's run folder; these ranks never read it
    (rank 0 hands them a checkpoint's state), so they may run on machines that do not have it."""

    remote_artifacts = False

    def __init__(self, run_id: str, folder: Path):
        self.run_id, self.dir = run_id, folder

    @contextmanager
    def hold(self) -> Iterator[None]:
        yield

    @contextmanager
    def system_metrics(self, interval: float = 10.0) -> Iterator[None]:
        yield

    def end(self, status: str, reason: str | None = None) -> bool:
        return True

    def metric(self, key: str, value: float, step: int) -> None:
        pass

    def metrics(self, values: dict[str, float], step: int) -> None:
        pass

    def maybe_flush(self, every_seconds: float = 10.0) -> None:
        pass

    def flush(self) -> None:
        pass

    def tags(self, values: dict) -> None:
        pass

    def publish_checkpoint(self) -> None:
        pass


def _who(holder: str) -> str:
    return holder.partition(" claim ")[0]


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), which speed figures need beside them; platform's is often empty."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def environment_tags(device: torch.device) -> dict[str, str]:
    """What a run's device-hours depend on (the device, the cores and threads it had) beside its versions."""
    from benchmark.cores import usable

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_model()} x{os.cpu_count()}"
    return {
        "git_commit": git_commit(),
        "device": f"{device.type}:{name}",
        "cores": str(usable()),
        "threads": str(torch.get_num_threads()),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, created if needed. Workers of one compare or study create it at the same moment:
    the one that loses the race takes the winner's."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:  # MLflow 3's UI shows an experiment as GenAI work unless told it is model training
        return client.create_experiment(name, tags={"mlflow.experimentKind": "custom_model_development"})
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def experiment_name_of(name: str) -> str:
    """An experiment name as given, or the one a spec file's runs go to by default (its stem)."""
    return Path(name).stem if name.endswith(".toml") else name


def find_experiments(names: list[str], client: MlflowClient | None = None) -> list:
    """MLflow experiments by name, where a spec file's path or name stands for the experiment its runs go to
    by default (experiments/smoke-ddpm.toml -> smoke-ddpm). An unknown name lists the ones the store has."""
    client = client or MlflowClient()
    found = {e.name: e for e in client.search_experiments()}
    wanted = [experiment_name_of(n) for n in names]
    missing = [n for n in wanted if n not in found]
    if missing:
        have = sorted(n for n in found if n not in ("Default", "reports"))
        raise UserError(f"no MLflow experiment named {', '.join(missing)} in {masked(mlflow.get_tracking_uri())}; it "
                        f"has: {', '.join(have) or 'none yet'}{did_you_mean(missing[0], have)}")
    return [found[n] for n in dict.fromkeys(wanted)]


def answering_ui(local: str = "http://127.0.0.1:5000") -> str | None:
    """Where the runs can be looked at now: a tracking server serves its own UI; for a local store, a `bench ui`
    on its default port if one answers. None: an address printed now would lead nowhere."""
    uri = mlflow.get_tracking_uri()
    if urlparse(uri).scheme in ("http", "https"):
        return masked(uri)
    try:
        with urllib.request.urlopen(f"{local}/health", timeout=0.5):
            return local
    except OSError:
        return None
