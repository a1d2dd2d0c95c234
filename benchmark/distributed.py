"""Data-parallel training over K ranks with torch.distributed (launched by torchrun / the elastic agent):
who this process is, its slice of each global batch, gradients averaged over ranks, and BatchNorm
statistics over the global batch. With one process every function here is the identity."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from benchmark.cores import worker_env
from benchmark.errors import UserError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs to MLflow, writes checkpoints and evaluates."""
        return self.rank == 0


_world = World()


def world() -> World:
    return _world


def init(device: torch.device) -> World:
    """Join the process group torchrun described in the environment (gloo on CPU, nccl on CUDA)."""
    global _world
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _world = World(dist.get_rank(), dist.get_world_size())
    return _world


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
    """What DistributedDataParallel does before the optimizer step, in one flat all-reduce: each rank's
    gradient of its mean loss, averaged over equal slices, is the gradient of the global batch's mean loss.
    (DDP's module wrapper is not used: a GAN calls D several times per backward and freezes it for G's step,
    which DDP's reducer does not allow.)"""
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


def step_consensus(seconds: float, stopping: bool, losses: dict[str, float]
                   ) -> tuple[float, bool, dict[str, float]]:
    """What every rank takes from a step, in one all-gather: the slowest rank's step time (so every rank
    charges the same cost and reaches the same eval points), whether any rank was told to stop (all stop at
    this step), and the global batch's mean losses (equal slices: the mean of the ranks' means)."""
    if _world.size == 1:
        return seconds, stopping, losses
    mine = torch.tensor([seconds, float(stopping), *losses.values()], dtype=torch.float64)
    every = [torch.empty_like(mine) for _ in range(_world.size)]
    dist.all_gather(every, mine)
    table = torch.stack(every)
    means = table[:, 2:].mean(dim=0).tolist()
    return table[:, 0].max().item(), bool(table[:, 1].max() > 0), dict(zip(losses, means, strict=True))


def broadcast(obj):
    """Rank 0's object on every rank (the MLflow run id, for one)."""
    if _world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if _world.size > 1:
        dist.barrier()


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


def launch(nproc: int, argv: list[str], on_failure=None) -> None:
    """`bench ARGV` on nproc local ranks through torch's elastic agent (what torchrun --standalone does), in
    this process so that a failed rank is one line here, naming the run and how to resume it. on_failure(run_id,
    reason) ends the run if no rank could (rank 0 killed, or stopped by the agent before it ended the run)."""
    import logging
    import tempfile
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)  # the agent's chatter: our line says it
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5)
    with tempfile.NamedTemporaryFile("r", suffix=".run-id") as run_file:
        os.environ.update(worker_env(nproc))  # the ranks inherit it
        os.environ["BENCH_RUN_ID_FILE"] = run_file.name
        try:
            elastic_launch(config, sys.executable)("-m", "benchmark.cli", *argv)
        except ChildFailedError as err:
            run_id = Path(run_file.name).read_text().strip()
            resume = (f"its last checkpoint is kept: bench run --resume {run_id} continues it on any number of "
                      "ranks (--nproc)") if run_id else "no run was started"
            stopped = f"the {nproc}-rank job stopped ({_first_failure(err)})"
            if run_id and on_failure is not None:
                on_failure(run_id, stopped)
            raise UserError(f"{stopped}; {resume}") from None
        finally:
            os.environ.pop("BENCH_RUN_ID_FILE", None)


def _first_failure(err) -> str:
    """The rank that failed first and how (the others were then stopped by the agent)."""
    rank, failure = err.get_first_failure()
    how = f"killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
    return f"rank {rank} first: {how}"


def lost_peer(err: BaseException) -> bool:
    """A collective failed because another rank is gone (killed, crashed): this rank's error is a consequence,
    not a bug of its own. gloo and NCCL report it as a RuntimeError naming the transport."""
    text = str(err)
    return _world.size > 1 and isinstance(err, RuntimeError) and any(
        s in text for s in ("gloo", "NCCL", "Connection reset", "Connection closed", "Broken pipe"))
