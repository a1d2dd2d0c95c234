"""What every model family shares: device and precision choice, autocast, FLOP counting, uint8 output."""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager
from contextvars import ContextVar
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Whoever shows a progress bar sets this around a sample() call; a family that makes many network passes per
# image (diffusion) reports the fraction of the call each pass completed. Families know nothing of the bar.
SAMPLING_PROGRESS: ContextVar[Callable[[float], None] | None] = ContextVar("sampling_progress", default=None)


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


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 on the CPU, rounded as PIL would save them."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().contiguous()


def rng_untouched() -> AbstractContextManager:
    """Work inside leaves the global CPU and CUDA RNGs as it found them (dropout masks come from them)."""
    return torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_available() else [])


def count_flops(fn: Callable[[], None], models: list[nn.Module]) -> float:
    """FLOPs of fn, counted by torch.utils.flop_counter; the models' state and the RNGs are put back afterwards."""
    saved = [copy.deepcopy(m.state_dict()) for m in models]
    # Counting runs in the first step of every process, resumed ones too: the dropout masks it draws
    # must not move the global RNG, or a resumed run would train on other masks than the killed one.
    with rng_untouched(), FlopCounterMode(display=False) as counter:
        fn()
    for model, state in zip(models, saved, strict=True):
        model.load_state_dict(state)
    return float(counter.get_total_flops())


def flops_per_image(cache: dict[str, float], key: str, fn: Callable[[], None], models: list[nn.Module]) -> float:
    """FLOPs per image of fn, which runs the work on a batch of 2; counted once per key and cached, the
    models' state and gradients left as they were. Families call it from their per-step cost queries."""
    if key not in cache:
        cache[key] = count_flops(fn, models) / 2
        for model in models:
            model.zero_grad(set_to_none=True)
    return cache[key]
