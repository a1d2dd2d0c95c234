"""Compute budgets ("58h", "50ep", "2Mimg", "50ep|58h") and the Meter that counts what a run spent."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from benchmark.errors import UserError

ACCEPTED = (
    "device time 90s, 30m, 58h, 2d; epochs 50ep; images 500kimg, 2Mimg, 128img; steps 10000step; "
    "FLOPs 1e18flop; several joined by '|' stop at the first spent (50ep|58h)"
)

_TIME_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_COUNT_PREFIX = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}
_TERM = re.compile(r"^(?P<num>[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)(?P<unit>s|m|h|d|ep|[kMG]?img|step|flop)$")


@dataclass(frozen=True)
class Budget:
    """Limits on the cost axes; a run stops when the first of them is reached. None means no limit."""

    device_seconds: float | None = None
    epochs: float | None = None
    images: int | None = None
    steps: int | None = None
    flops: float | None = None
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> Budget:
        """Parse a budget string; a bad one is a UserError that names the accepted forms."""
        limits: dict[str, float] = {}
        terms = [t.strip() for t in str(text).split("|")]
        if not text or not all(terms):
            raise UserError(f"empty budget {text!r}; accepted: {ACCEPTED}")
        for term in terms:
            match = _TERM.match(term)
            if not match:
                raise UserError(f"bad budget {term!r}; accepted: {ACCEPTED}")
            num, unit = float(match["num"]), match["unit"]
            if num <= 0:
                raise UserError(f"budget {term!r} must be positive; accepted: {ACCEPTED}")
            if unit in _TIME_UNITS:
                key, value = "device_seconds", num * _TIME_UNITS[unit]
            elif unit == "ep":
                key, value = "epochs", num
            elif unit.endswith("img"):
                key, value = "images", num * _COUNT_PREFIX[unit[:-3]]
            elif unit == "step":
                key, value = "steps", num
            else:
                key, value = "flops", num
            if key in limits:
                raise UserError(f"budget {text!r} names {key.replace('_', ' ')} twice")
            limits[key] = value
        for key in ("images", "steps"):
            if key in limits:
                if limits[key] < 1:
                    raise UserError(f"budget {text!r} is below one {key[:-1]}")
                limits[key] = int(round(limits[key]))
        return cls(text=str(text), **limits)

    def fraction_spent(self, meter: Meter) -> float:
        """How far the run is towards its first-reached limit, in [0, 1]."""
        parts = []
        if self.device_seconds:
            parts.append(meter.device_seconds / self.device_seconds)
        if self.epochs:  # counted in whole images, as image_cap cuts the last batch: 0.1ep of 4,591 is 459
            parts.append(meter.images_seen / self.epoch_images(meter.dataset_size))
        if self.images:
            parts.append(meter.images_seen / self.images)
        if self.steps:
            parts.append(meter.steps / self.steps)
        if self.flops:
            parts.append(meter.flops / self.flops)
        return min(1.0, max(parts, default=1.0))

    def spent(self, meter: Meter) -> bool:
        return self.fraction_spent(meter) >= 1.0

    def image_cap(self, dataset_size: int) -> int | None:
        """The most images the run may see, when images or epochs bound it; the last batch is cut to fit."""
        bounds = []
        if self.images:
            bounds.append(self.images)
        if self.epochs:
            bounds.append(self.epoch_images(dataset_size))
        return min(bounds) if bounds else None

    def epoch_images(self, dataset_size: int) -> int:
        """The epoch limit in whole images: the one count both the cap and the spent fraction use."""
        return max(1, int(round(self.epochs * dataset_size)))


@dataclass
class Meter:
    """What a run has spent so far, on every cost axis; saved in checkpoints so a resume keeps counting."""

    images_seen: int = 0
    steps: int = 0
    device_seconds: float = 0.0  # training only: evaluation and checkpoints are counted apart
    wall_seconds: float = 0.0  # training steps' wall time; device_seconds is it times the devices
    eval_seconds: float = 0.0
    checkpoint_seconds: float = 0.0  # saving and uploading checkpoints: not training, not evaluation
    flops: float = 0.0
    dataset_size: int = 1
    devices: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def epochs(self) -> float:
        return self.images_seen / max(1, self.dataset_size)

    @property
    def device_hours(self) -> float:
        return self.device_seconds / 3600.0

    @property
    def pflops(self) -> float:
        return self.flops / 1e15

    def add_step(self, images: int, seconds: float, flops_per_image: float) -> None:
        self.images_seen += images
        self.steps += 1
        self.wall_seconds += seconds
        self.device_seconds += seconds * self.devices
        self.flops += images * flops_per_image

    def charge(self, stage: str | None, images: int, seconds: float, flops: float) -> None:
        """One-off work outside the steps (encoding a data set, a reused autoencoder's training): device-seconds
        and FLOPs in the totals and in its stage's columns; images only in the stage's (the data stream and
        images budgets count the images this run reads)."""
        self.device_seconds += seconds
        self.flops += flops
        self.add_to_stage(stage, images, seconds, flops)

    def add_to_stage(self, stage: str | None, images: int, device_seconds: float, flops: float) -> None:
        """Multi-stage families (ldm) log each stage's cost apart; the totals hold them all."""
        if stage is not None:
            for key, value in (("images", images), ("device_seconds", device_seconds), ("flops", flops)):
                self.extra[f"{stage}_{key}"] = self.extra.get(f"{stage}_{key}", 0) + value

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
