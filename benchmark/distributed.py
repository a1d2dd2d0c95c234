"""Data-parallel training over K ranks with torch.distributed (launched by torchrun / the elastic agent):
who this process is, its slice of each global batch, gradients averaged over ranks, BatchNorm statistics
and dropout masks of the global batch, and the points where the ranks agree (step time, stop, failure).
With one process every function here is the identity.

Two process groups: the device's (NCCL on CUDA) carries gradients and BatchNorm sums, as tensors on the
rank's own GPU; a gloo *control* group carries everything CPU-side (step consensus, broadcasts of ids and
state, barriers, gathered evaluation features). On CPU both are gloo: the CPU tests run the very calls a
GPU job makes."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from benchmark.cores import worker_env
from benchmark.errors import UserError

# How long a rank waits in a collective for the others. NCCL's default (10 minutes) is shorter than a long
# first evaluation on rank 0 (real statistics of 50,000 images): every wait here is bounded by this instead.
TIMEOUT_MINUTES = float(os.environ.get("BENCH_DIST_TIMEOUT_MINUTES", "30"))


class PeerFailed(UserError):
    """Another rank raised; this one stops at the same point (the run's reason names that rank)."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs to MLflow, writes checkpoints and scores evaluations."""
        return self.rank == 0


_world = World()
_control = None  # the gloo group of CPU-side collectives


def world() -> World:
    return _world


def init(device: torch.device) -> World:
    """Join the job torchrun described in the environment: the device's group (gloo on CPU, nccl on CUDA, bound
    to this rank's GPU before it is created) and the gloo control group."""
    global _world, _control
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        timeout = timedelta(minutes=TIMEOUT_MINUTES)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # object collectives and NCCL's own state use the current device
            dist.init_process_group("nccl", timeout=timeout, device_id=device)
        else:
            dist.init_process_group("gloo", timeout=timeout)
        _control = dist.new_group(backend="gloo", timeout=timeout)
        _world = World(dist.get_rank(), dist.get_world_size())
    return _world


def leave() -> None:
    """Destroy the process groups once a rank is done: left to the interpreter's exit, gloo's threads can abort
    the process ("terminate called without an active exception") after it finished its work."""
    global _control
    if dist.is_initialized():
        dist.destroy_process_group()
        _control = None


def local_device(name: str) -> str:
    """On CUDA each rank takes the GPU of its local rank (auto or cuda); anything else is as given."""
    if name in ("auto", "cuda") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return name


def shard(x: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a tensor drawn for the global batch (dim 0)."""
    w = _world
    if w.size == 1:
        return x
    if x.shape[0] % w.size:
        raise UserError(f"a batch of {x.shape[0]} does not split over {w.size} ranks; make batch_size a multiple")
    per = x.shape[0] // w.size
    return x[w.rank * per : (w.rank + 1) * per]


def average_gradients(parameters) -> None:
    """What DistributedDataParallel does before the optimizer step, in one flat all-reduce on the device's
    group: each rank's gradient of its mean loss, averaged over equal slices, is the gradient of the global
    batch's mean loss. (DDP's module wrapper is not used: a GAN calls D several times per backward and
    freezes it for G's step, which DDP's reducer does not allow.)"""
    if _world.size == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= _world.size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _message(err: BaseException) -> str:
    return str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"


def _raise_first(errors: list[str | None], mine: BaseException | None) -> None:
    """Every rank raises where any did: its own exception, or PeerFailed naming the first rank that raised."""
    if mine is not None:
        raise mine
    for rank, text in enumerate(errors):
        if text is not None:
            raise PeerFailed(f"rank {rank}: {text}")


def settle(payload: Any = None, error: BaseException | None = None) -> list[Any]:
    """A barrier that also carries each rank's payload and whether it raised since the last one: every rank
    gets every payload, or every rank raises (the one that failed its own exception, the others PeerFailed).
    Rank-local work between collectives hands its exception here instead of skipping a collective, which would
    leave the other ranks waiting in it."""
    if _world.size == 1:
        if error is not None:
            raise error
        return [payload]
    every: list = [None] * _world.size
    dist.all_gather_object(every, (None if error is None else _message(error), payload), group=_control,
                           weights_only=True)
    _raise_first([e for e, _ in every], error)
    return [p for _, p in every]


def gather_to_main(payload: Any, error: BaseException | None = None) -> list[Any] | None:
    """Every rank's payload on rank 0 (None elsewhere), in rank order: what settle() does, without sending rank
    0's large payloads (evaluation features) to every rank. Rank 0 raises if any rank failed; the others raise
    their own error, or learn of rank 0's at the next settle()."""
    if _world.size == 1:
        if error is not None:
            raise error
        return [payload]
    every: list | None = [None] * _world.size if _world.main else None
    dist.gather_object((None if error is None else _message(error), payload), every, dst=0, group=_control,
                       weights_only=True)
    if not _world.main:
        if error is not None:
            raise error
        return None
    _raise_first([e for e, _ in every], error)
    return [p for _, p in every]


def attempt(work, *args) -> BaseException | None:
    """Run rank-local work (no collective inside). With one process its exception propagates; with several
    it is returned, to hand to the next settle() or gather_to_main(), where every rank stops with it."""
    if _world.size == 1:
        work(*args)
        return None
    try:
        work(*args)
    except Exception as err:  # noqa: BLE001 - whatever it is, every rank must learn of it at the next collective
        return err
    return None


@dataclass
class Step:
    """What every rank takes from a step: the slowest rank's step time (so every rank charges the same cost
    and reaches the same eval points), whether any rank was told to stop (all stop at this step), and the
    global batch's mean losses (equal slices: the mean of the ranks' means)."""

    seconds: float
    stopping: bool
    losses: dict[str, float]


def step_consensus(seconds: float, stopping: bool, losses: dict[str, float],
                   error: BaseException | None = None) -> Step:
    """One settle() per step; a rank that raised in its step (say, its slice diverged) stops every rank."""
    if _world.size == 1:
        if error is not None:
            raise error
        return Step(seconds, stopping, losses)
    every = settle((seconds, stopping, losses), error)
    means = {k: sum(p[2][k] for p in every) / len(every) for k in losses}
    return Step(max(p[0] for p in every), any(p[1] for p in every), means)


def broadcast(obj):
    """Rank 0's object on every rank (the MLflow run id, the spec, a checkpoint's state), over the control
    group; unpickled with weights_only=True."""
    if _world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_control, weights_only=True)
    return box[0]


def all_rows(mine: torch.Tensor, total: int) -> torch.Tensor:
    """The rows every rank computed for its part of range(total) (parts from part()), joined in order on every
    rank: the ldm's latents, encoded once over the ranks. CPU tensors on the control group."""
    if _world.size == 1:
        return mine
    sizes = [len(range(*part(total, r, _world.size))) for r in range(_world.size)]
    padded = torch.zeros((max(sizes), *mine.shape[1:]), dtype=mine.dtype)
    padded[: len(mine)] = mine
    every = [torch.empty_like(padded) for _ in range(_world.size)]
    dist.all_gather(every, padded, group=_control)
    return torch.cat([t[:n] for t, n in zip(every, sizes, strict=True)])


def part(total: int, rank: int | None = None, size: int | None = None) -> tuple[int, int]:
    """[start, stop) of rank's contiguous part of range(total), sizes differing by at most one."""
    rank = _world.rank if rank is None else rank
    size = _world.size if size is None else size
    per, extra = divmod(total, size)
    start = rank * per + min(rank, extra)
    return start, start + per + (rank < extra)


_alone = False


@contextmanager
def alone() -> Iterator[None]:
    """Code that one rank runs by itself (rank 0's evaluation): no collective inside may wait for the others."""
    global _alone
    before, _alone = _alone, True
    try:
        yield
    finally:
        _alone = before


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the global batch: sums over every rank's slice
    (differentiable all-reduce). torch's SyncBatchNorm does this on GPUs only; this one runs on gloo and nccl,
    and stands aside inside `alone()`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _world.size > 1 and not _alone):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        xf = x.float()
        stats = torch.cat([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)), count.float()])
        stats = all_reduce(stats)
        c = self.num_features
        n = stats[2 * c]
        mean = stats[:c] / n
        var = stats[c : 2 * c] / n - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - momentum).add_(momentum * mean)
                self.running_var.mul_(1 - momentum).add_(momentum * var * n / max(float(n) - 1, 1.0))
        y = (xf - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d of `module` normalised over the global batch (GlobalBatchNorm2d). Weights and buffers
    keep their names, so checkpoints stay interchangeable between any numbers of ranks."""
    if _world.size == 1:
        return module
    return _swap_batchnorm(module, nn.BatchNorm2d, GlobalBatchNorm2d)


def _swap_batchnorm(module: nn.Module, old: tuple | type, new: type) -> nn.Module:
    for name, child in module.named_children():
        if type(child) is not new and isinstance(child, old):
            swapped = new(child.num_features, child.eps, child.momentum, child.affine,
                          child.track_running_stats).to(child.weight.device)
            swapped.load_state_dict(child.state_dict())
            setattr(module, name, swapped)
        else:
            _swap_batchnorm(child, old, new)
    return module


def local_batchnorm(module: nn.Module) -> nn.Module:
    """Plain BatchNorm2d again (same weights and buffers): for a copy that one rank runs alone, e.g. to sample,
    where statistics over ranks would wait for ranks that are not sampling."""
    return _swap_batchnorm(module, GlobalBatchNorm2d, nn.BatchNorm2d)


_dropout_noise: ContextVar[torch.Generator | None] = ContextVar("dropout_noise", default=None)


@contextmanager
def dropout_noise(generator: torch.Generator) -> Iterator[None]:
    """GlobalDropout inside draws its masks from `generator` (a family's own, saved in its checkpoints and the
    same on every rank), as the diffusion noise is drawn: for the global batch, then this rank's slice."""
    token = _dropout_noise.set(generator)
    try:
        yield
    finally:
        _dropout_noise.reset(token)


class GlobalDropout(nn.Dropout):
    """Dropout whose mask is this rank's slice of the mask one process draws for the global batch, so that
    K ranks train what one process trains with dropout on (torch's Dropout draws from each process's global
    RNG: the same mask on every slice). Outside dropout_noise() (FLOP counting) it is torch's Dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        generator = _dropout_noise.get()
        if not self.training or self.p == 0 or generator is None:
            return super().forward(x)
        keep = 1.0 - self.p
        every = torch.rand((x.shape[0] * _world.size, *x.shape[1:]), generator=generator, device=generator.device)
        mask = shard(every < keep).to(x.device).clone()  # a copy: the slice alone stays alive for backward
        return x * mask.to(x.dtype) / keep


def launch(nproc: int, argv: list[str], on_failure=None) -> None:
    """`bench ARGV` on nproc local ranks through torch's elastic agent (what torchrun --standalone does), in
    this process so that a failed job is one line here: the first rank's own error (ranks write theirs to a
    folder instead of the terminal), how the job stopped, and how to resume it. on_failure(run_id, reason) ends
    the run if no rank could (rank 0 killed, or stopped by the agent before it ended the run)."""
    import logging
    import tempfile
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)  # the agent's chatter: our line says it
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5)
    with tempfile.TemporaryDirectory(prefix="bench-launch-") as folder:
        os.environ.update(worker_env(nproc))  # the ranks inherit it
        os.environ.update(BENCH_LAUNCH_DIR=folder, BENCH_LAUNCHER_PID=str(os.getpid()))
        try:
            elastic_launch(config, sys.executable)("-m", "benchmark.cli", *argv)
        except ChildFailedError as err:
            run_file = Path(folder) / "run-id"
            run_id = run_file.read_text().strip() if run_file.is_file() else ""
            resume = (f"its last checkpoint is kept: bench run --resume {run_id} continues it on any number of "
                      "ranks (--nproc)") if run_id else "no run was started"
            stopped = f"the {nproc}-rank job stopped ({_first_failure(err)})"
            said = _ranks_errors(Path(folder), nproc)
            reason = f"{said}; {stopped}" if said else stopped
            if run_id and on_failure is not None:
                on_failure(run_id, reason)
            raise UserError(f"{reason}; {resume}") from None
        finally:
            for key in ("BENCH_LAUNCH_DIR", "BENCH_LAUNCHER_PID"):
                os.environ.pop(key, None)


def note_run(run_id: str) -> None:
    """Tell `bench run --nproc` which run its job trains, for the line it prints if the job fails."""
    folder = os.environ.get("BENCH_LAUNCH_DIR")
    if folder:
        Path(folder, "run-id").write_text(run_id)


def report_error(line: str) -> bool:
    """A rank under `bench run --nproc` leaves its error line for the launcher, which prints one line for the
    job; True if it did (elsewhere, as under torchrun, the rank prints it itself)."""
    folder = os.environ.get("BENCH_LAUNCH_DIR")
    if not folder or "RANK" not in os.environ:
        return False
    Path(folder, f"rank{os.environ['RANK']}.error").write_text(line)
    return True


def _ranks_errors(folder: Path, nproc: int) -> str:
    """Rank 0's error line (it names the rank that failed first), else the lowest rank's that left one."""
    for rank in range(nproc):
        path = folder / f"rank{rank}.error"
        if path.is_file():
            return path.read_text().strip()
    return ""


def _first_failure(err) -> str:
    """The rank that failed first and how (the others were then stopped by the agent)."""
    rank, failure = err.get_first_failure()
    how = f"killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
    return f"rank {rank} first: {how}"


# After the launcher is gone, the seconds a rank has to checkpoint at its step's end before it exits anyway.
ORPHAN_GRACE_SECONDS = 8.0


def watch_launcher() -> None:
    """A rank whose launcher died (SIGKILL: its agent cannot stop the ranks) stops too, instead of training
    on as an orphan: SIGTERM to itself (the ranks stop at one step, checkpoint and end the run KILLED), then
    exits after ORPHAN_GRACE_SECONDS whatever it is doing."""
    pid = os.environ.get("BENCH_LAUNCHER_PID")
    if not pid or "RANK" not in os.environ:
        return
    import signal

    def watch() -> None:
        while os.getppid() == int(pid):
            time.sleep(0.25)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(ORPHAN_GRACE_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def lost_peer(err: BaseException) -> bool:
    """A collective failed because another rank is gone (killed, crashed): this rank's error is a consequence,
    not a bug of its own. gloo and NCCL report it as a RuntimeError naming the transport."""
    text = str(err)
    return _world.size > 1 and isinstance(err, RuntimeError) and any(
        s in text for s in ("gloo", "NCCL", "Connection reset", "Connection closed", "Broken pipe"))
