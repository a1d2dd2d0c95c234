"""RunSpec: everything that defines a run (model, data, budget, hyperparameters), from TOML and --set."""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.budget import Budget
from benchmark.errors import UserError, did_you_mean

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
    # generated images per evaluation; 0 turns metrics off (grids only); auto: what ~10% of the budget affords
    "samples": "auto",
    "real_samples": "auto",  # real images behind the cached reference statistics; auto: as many (>= 256)
    "points": 4,  # log-spaced evaluation points over the budget, the last at its end (a scaling fit needs 4)
    "grid": 64,  # images in each sample grid
    "batch_size": 64,
    # BatchNorm generators (the GANs' G) sample with: standing statistics recomputed from fresh noise before
    # each evaluation (BigGAN), batch statistics (train mode, as the DCGAN tutorials), or the running averages
    "bn": "standing",
    # Inception features in fp32: bf16 is 1.6-1.9x faster where fast but moves KID by 1.5-3% (ARCHITECTURE.md)
    "precision": "fp32",
}
CHOICES = {
    "split": ("train", "valid", "test", "all"),
    "precision": ("fp32", "bf16", "auto"),
    "resolution": (32, 64, 128),
    "eval.bn": ("standing", "batch", "running"),
    "eval.precision": ("fp32", "bf16"),
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


AUTO = ("eval.samples", "eval.real_samples")  # "auto" or a number of images


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check a value against the type of its default; ints are accepted where floats are expected."""
    if key in AUTO:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        raise UserError(f"{key} must be auto or a number of images (0 or more), got {value!r}")
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


def assignment(item: str, option: str) -> tuple[str, str]:
    """KEY=VALUE as given to --set or --tag; anything else is one line naming the option."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"{option} takes key=value, got {item!r}")
    return key.strip(), value


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a spec file (experiments/*.toml); unreadable or malformed files are UserErrors."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"spec file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read spec file {path}: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"spec file {path} is not valid TOML: {err}") from None


def build_spec(
    model: str | None,
    family_defaults: dict[str, Any],
    experiment: dict[str, Any] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    cli: dict[str, Any] | None = None,
) -> RunSpec:
    """Resolve defaults < spec file < CLI flags < --set overrides into a validated RunSpec."""
    defaults = {**COMMON, **family_defaults}
    values = dict(defaults)
    eval_values = dict(EVAL)

    def assign(key: str, value: Any, origin: str) -> None:
        if key.startswith("eval."):
            sub = key[5:]
            if sub not in EVAL:
                raise UserError(f"unknown key {key!r} in {origin}; eval keys: {', '.join(EVAL)}"
                                f"{did_you_mean(key, [f'eval.{k}' for k in EVAL])}")
            eval_values[sub] = _coerce(key, value, EVAL[sub])
        elif key in defaults:
            values[key] = _coerce(key, value, defaults[key])
        else:
            raise UserError(f"unknown key {key!r} in {origin}; known keys: {', '.join(sorted(defaults))}, eval.*"
                            f"{did_you_mean(key, [*defaults, *(f'eval.{k}' for k in EVAL)])}")

    experiment = dict(experiment or {})
    experiment.pop("model", None)
    experiment.pop("description", None)
    for key, value in experiment.items():
        if key == "eval" and isinstance(value, dict):
            for sub, subvalue in value.items():
                assign(f"eval.{sub}", subvalue, "spec file")
        else:
            assign(key, value, "spec file")
    for key, value in (cli or {}).items():
        if value is not None:
            assign(key, value, "command line")
    for item in overrides:
        key, text = assignment(item, "--set")
        assign(key, parse_value(text.strip()), "--set")
    Budget.parse(values["budget"])  # fail early on a bad budget string
    if values["batch_size"] < 1:
        raise UserError("batch_size must be at least 1")
    return RunSpec(model=model or "", values=values, eval=eval_values)


# What each common and eval key means (bench run --show-spec, the README's tables); families have their own HELP.
HELP = {
    "data": "CelebA folder or .zip, any image folder, or synthetic (procedural faces, offline)",
    "split": "CelebA partition trained on (and the reference the metrics compare with)",
    "resolution": "side of the square images, pixels",
    "budget": "cost limit(s): 90s 30m 58h 2d (device-hours), 50ep, 2Mimg, 10000step, 1e18flop, joined by |",
    "seed": "weights, noise and data order; a CPU run with the same seed is bit-exact",
    "batch_size": "images per training step",
    "precision": "auto: bf16 autocast where the hardware is fast at it (CUDA Ampere+, AMX/AVX512-BF16 CPUs)",
    "channels_last": "NHWC memory layout for convolutions",
    "log_every": "steps between logged training losses",
    "checkpoint_minutes": "minutes between checkpoints (also at every eval point); 0: after every step",
    "synthetic_images": "images drawn when data = synthetic",
    "eval.samples": "generated images scored at each eval point; auto: the largest of 64 ... 50,000 whose "
                    "evaluations take at most ~10% of the budget on this device, measured at the start; 0: grids only. "
                    "Below 2,000 KID leads",
    "eval.real_samples": "real images behind the cached reference statistics; auto: as many as eval.samples, at "
                         "least 256, capped by the split",
    "eval.points": "log-spaced eval points over the budget (1/8, 1/4, 1/2, 1 for 4), the last at its end",
    "eval.grid": "images in each sample grid (logged as the run's images)",
    "eval.batch_size": "batch for sampling and Inception features",
    "eval.bn": "BatchNorm statistics the GANs' G samples with: recomputed from fresh noise (standing, BigGAN), "
               "train mode (batch), or the running averages",
    "eval.precision": "Inception features' precision; bf16: 1.6-1.9x faster where bf16 is fast, FID within 0.5% "
                      "of fp32 but KID 1.5-3% off (bench calibrate --inception). Never compared across precisions",
}


def spec_table(model: str, family_defaults: dict[str, Any], family_help: dict[str, str],
               spec: RunSpec | None = None) -> str:
    """Every key of a model's spec as a Markdown table: default, type, meaning; with `spec`, a column with the
    value this command line gives where it differs (`bench run --model M --show-spec`, the README's tables)."""
    meanings = {**HELP, **family_help}
    rows = [(k, v) for k, v in {**COMMON, **family_defaults}.items()]
    rows += [(f"eval.{k}", v) for k, v in EVAL.items()]
    given = {} if spec is None else {**spec.values, **{f"eval.{k}": v for k, v in spec.eval.items()}}
    changed = {k: given[k] for k, v in rows if k in given and given[k] != v}
    head = ["key", "default", "type", "meaning"] + (["this command line"] if changed else [])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for key, default in rows:
        kind = (" \\| ".join(map(str, CHOICES[key])) if key in CHOICES else "auto \\| int" if key in AUTO
                else type(default).__name__)
        cells = [f"`{key}`", f"`{_toml_value(default)}`", kind, meanings.get(key, "").replace("|", "\\|")]
        if changed:
            cells.append(f"`{_toml_value(changed[key])}`" if key in changed else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
