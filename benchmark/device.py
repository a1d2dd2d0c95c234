"""Where and how a process computes: its device, the precision it picks there, autocast, and the global RNG
streams (CPU and its own GPU's) that a checkpoint saves and work outside training must leave untouched. The
training loop, the metrics and the model families all import it; it imports none of them."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """AMX or AVX512-BF16 (in /proc/cpuinfo's flags): the CPUs on which bf16 matmuls beat fp32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is bf16 autocast where the hardware is fast at it (CUDA Ampere+, AMX CPUs), else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def precision_reason(precision: str, picked: str, device: torch.device) -> str:
    """Why a run computes in `picked`: said at its start, since machines of one kind differ."""
    if precision != "auto":
        return f"{picked} (set by precision = {precision})"
    if device.type == "cuda":
        return f"{picked} (auto: compute capability {'.'.join(map(str, torch.cuda.get_device_capability(device)))})"
    why = "this CPU has AMX or AVX512-BF16" if picked == "bf16" else "no AMX/AVX512-BF16 on this CPU: bf16 is slow"
    return f"{picked} (auto: {why})"


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _own_gpu() -> list[int]:
    """The one GPU this process computes on (each rank has its own), or none."""
    return [torch.cuda.current_device()] if torch.cuda.is_available() else []


def rng_untouched() -> AbstractContextManager:
    """Work inside leaves the global CPU RNG and this process's GPU RNG as it found them."""
    return torch.random.fork_rng(devices=_own_gpu())


def rng_state() -> dict[str, Any]:
    """The global RNG states a checkpoint saves: the CPU's and, on a GPU, this process's own device's only,
    so that a resume on a machine with another number of GPUs restores what it has."""
    return {"torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {})}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch_rng"])
    cuda = state.get("cuda_rng")
    if cuda is not None and torch.cuda.is_available():
        # checkpoints before this key held every visible GPU's state: the first is the one rank 0 used
        torch.cuda.set_rng_state(cuda[0] if isinstance(cuda, list | tuple) else cuda)
