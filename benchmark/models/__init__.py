"""Model families. Each offers the same few things, so nothing else branches on the model:

    Family(spec, device, precision)          # build nets, optimizers (and EMA where it has one)
    train_step(batch, indices=, fraction=, data=) -> dict
                                             # batch: floats in [-1, 1]; the keywords tell where in the data
                                             # and the budget the step is (ldm switches stage on them)
    sample(n, generator) -> uint8 (n,3,H,W)
    state_dict() / load_state_dict()         # everything needed to resume bit-exactly
    flops_per_train_image(), flops_per_sample(), sample_nfe

Optional, where a family has them: `stage` (costs are also logged per stage), `charges` (one-off work
to charge, popped by the loop), `extra_eval_sets(real)` (more image sets to score, e.g. reconstructions),
`sampler_steps` (settable: the sampling-cost sweep of `bench eval --sampler-steps`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.catalog import ALIASES, DESCRIPTIONS
from benchmark.errors import UserError, did_you_mean
from benchmark.models import dcgan, ddpm, ldm, wgan_gp

# name: (class, spec defaults, what it is)
FAMILIES = {
    "dcgan": (dcgan.DCGAN, dcgan.DEFAULTS, DESCRIPTIONS["dcgan"]),
    "wgan-gp": (wgan_gp.WGANGP, wgan_gp.DEFAULTS, DESCRIPTIONS["wgan-gp"]),
    "ddpm": (ddpm.DDPM, ddpm.DEFAULTS, DESCRIPTIONS["ddpm"]),
    "ldm": (ldm.LDM, ldm.DEFAULTS, DESCRIPTIONS["ldm"]),
}


def family(name: str) -> tuple[type, dict[str, Any]]:
    """The family class and its hyperparameter defaults; an unknown name is a UserError."""
    if name not in FAMILIES:
        raise UserError(f"unknown model {name!r}; choose from: {', '.join([*FAMILIES, *ALIASES])}"
                        f"{did_you_mean(name, [*FAMILIES, *ALIASES])}")
    cls, defaults, _ = FAMILIES[name]
    return cls, defaults


def key_help(name: str) -> dict[str, str]:
    """What each of a family's own spec keys means (bench run --show-spec)."""
    return {"dcgan": dcgan.HELP, "wgan-gp": wgan_gp.HELP, "ddpm": ddpm.HELP, "ldm": ldm.HELP}[name]


def resolve(name: str, experiment: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(family, experiment settings) for a --model name; an alias brings its spec file along."""
    if name not in ALIASES:
        return name, experiment
    if experiment:
        raise UserError(f"--model {name} already means {ALIASES[name][1]}; give --model {ALIASES[name][0]} "
                        "with --spec to start from another file")
    from benchmark.spec import load_toml

    fam, file, _ = ALIASES[name]
    return fam, {**load_toml(Path(__file__).resolve().parents[2] / "experiments" / file), "model": fam}
