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

from benchmark.errors import UserError
from benchmark.models import dcgan, ddpm, ldm, wgan_gp

# name: (class, spec defaults, what it is); each module's HELP says what its keys mean
FAMILIES = {
    "dcgan": (dcgan.DCGAN, dcgan.DEFAULTS, "the seed's DCGAN (Radford et al. 2016): BCE, Adam, z=100"),
    "wgan-gp": (wgan_gp.WGANGP, wgan_gp.DEFAULTS, "DCGAN backbone, Wasserstein loss + gradient penalty "
                "(Gulrajani et al. 2017), critic without BatchNorm, n_critic 5"),
    "ddpm": (ddpm.DDPM, ddpm.DEFAULTS, "pixel-space diffusion (Ho et al. 2020): UNet, EMA, DDPM or DDIM sampling"),
    "ldm": (ldm.LDM, ldm.DEFAULTS, "latent diffusion (Rombach et al. 2022): KL autoencoder f=4 (64x64x3 -> "
            "16x16x4) trained in the same run, then a UNet on its latents"),
}
# The user's own words: names that stand for a family with a spec file's settings.
ALIASES = {
    "diffusion": ("ldm", "seed-ldm.toml", "the seed report's latent diffusion as it wrote it "
                  "(ldm with experiments/seed-ldm.toml: batch 5, lr 3e-4, 40 epochs)"),
}


def family(name: str) -> tuple[type, dict[str, Any]]:
    """The family class and its hyperparameter defaults; an unknown name is a UserError."""
    if name not in FAMILIES:
        raise UserError(f"unknown model {name!r}; choose from: {', '.join([*FAMILIES, *ALIASES])}")
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
