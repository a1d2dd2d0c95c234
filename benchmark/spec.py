"""RunSpec: everything that defines a run (model, data, budget, hyperparameters), from TOML and --set."""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.budget import Budget
from benchmark.errors import UserError

# Fields every run has, with their defaults. Family hyperparameters come from the family's DEFAULTS.
COMMON: dict[str, Any] = {
    "data": "synthetic",  # a CelebA folder or zip, any image folder, or "synthetic"
    "split": "train",  # CelebA partition: train | valid | test | all
    "resolution": 64,
    "budget": "2m",
    "seed": 0,
    "batch_size": 128,
    "precision": "auto",  # fp32 | bf16 | auto (bf16 autocast where the hardware is fast at it)
    "channels_last": True,
    "log_every": 10,  # steps between logged training metrics
    "checkpoint_minutes": 5.0,  # 0 checkpoints after every step
    "synthetic_images": 5000,
}
EVAL: dict[str, Any] = {
    "samples": 64,  # generated images per evaluation; 0 turns metrics off (grids only)
    "real_samples": 256,  # real images behind the cached reference statistics
    "points": 3,  # log-spaced evaluation points over the budget, the last at its end
    "grid": 64,  # images in each sample grid
    "batch_size": 64,
    # BatchNorm generators (the GANs' G) sample with: standing statistics recomputed from fresh noise before
    # each evaluation (BigGAN), batch statistics (train mode, as the DCGAN tutorials), or the running averages
    "bn": "standing",
}
CHOICES = {
    "split": ("train", "valid", "test", "all"),
    "precision": ("fp32", "bf16", "auto"),
    "resolution": (32, 64, 128),
    "eval.bn": ("standing", "batch", "running"),
}


@dataclass
class RunSpec:
    """A validated run specification; `values` is flat except for the `eval` table."""

    model: str
    values: dict[str, Any]
    eval: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def budget_obj(self) -> Budget:
        return Budget.parse(self.values["budget"])

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, **self.values, "eval": dict(self.eval)}

    def to_toml(self) -> str:
        lines = [f"model = {_toml_value(self.model)}"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in self.values.items()]
        lines += ["", "[eval]"] + [f"{k} = {_toml_value(v)}" for k, v in self.eval.items()]
        return "\n".join(lines) + "\n"

    def flat_params(self) -> dict[str, Any]:
        """The spec as MLflow params: eval keys dotted."""
        params = {"model": self.model, **self.values}
        params.update({f"eval.{k}": v for k, v in self.eval.items()})
        return params

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def parse_value(text: str) -> Any:
    """A --set value as TOML would read it (1e-4, true, [1, 2]); anything else is a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check a value against the type of its default; ints are accepted where floats are expected."""
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not expected and not (expected is list and isinstance(value, list)):
        raise UserError(f"{key} must be {expected.__name__}, got {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        raise UserError(f"{key} must be one of {', '.join(map(str, CHOICES[key]))}, got {value!r}")
    if expected in (int, float) and key not in ("seed",) and value < 0:
        raise UserError(f"{key} must not be negative, got {value!r}")
    return value


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read an experiment file; unreadable or malformed files are UserErrors."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"experiment file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read experiment file {path}: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"experiment file {path} is not valid TOML: {err}") from None


def build_spec(
    model: str | None,
    family_defaults: dict[str, Any],
    experiment: dict[str, Any] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    cli: dict[str, Any] | None = None,
) -> RunSpec:
    """Resolve defaults < experiment file < CLI flags < --set overrides into a validated RunSpec."""
    defaults = {**COMMON, **family_defaults}
    values = dict(defaults)
    eval_values = dict(EVAL)

    def assign(key: str, value: Any, origin: str) -> None:
        if key.startswith("eval."):
            sub = key[5:]
            if sub not in EVAL:
                raise UserError(f"unknown key {key!r} in {origin}; eval keys: {', '.join(EVAL)}")
            eval_values[sub] = _coerce(key, value, EVAL[sub])
        elif key in defaults:
            values[key] = _coerce(key, value, defaults[key])
        else:
            raise UserError(f"unknown key {key!r} in {origin}; known keys: {', '.join(sorted(defaults))}, eval.*")

    experiment = dict(experiment or {})
    experiment.pop("model", None)
    experiment.pop("description", None)
    for key, value in experiment.items():
        if key == "eval" and isinstance(value, dict):
            for sub, subvalue in value.items():
                assign(f"eval.{sub}", subvalue, "experiment file")
        else:
            assign(key, value, "experiment file")
    for key, value in (cli or {}).items():
        if value is not None:
            assign(key, value, "command line")
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set takes key=value, got {item!r}")
        assign(key.strip(), parse_value(text.strip()), "--set")
    Budget.parse(values["budget"])  # fail early on a bad budget string
    if values["batch_size"] < 1:
        raise UserError("batch_size must be at least 1")
    return RunSpec(model=model or "", values=values, eval=eval_values)
