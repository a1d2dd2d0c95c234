"""`bench eval`: score a run's latest checkpoint into that run, or any two image sets against each other."""

from __future__ import annotations

import logging

from benchmark import data as data_mod
from benchmark.device import pick_device
from benchmark.errors import UserError
from benchmark.metrics import (
    MIN_IMAGES,
    Evaluator,
    headline,
    leading_metric,
    provenance,
    sample_for_eval,
    sampling_bn,
    score,
)
from benchmark.saved_run import open_run

log = logging.getLogger(__name__)


SWEPT = ("fid", "kid_mean", "kid_std", "precision", "recall", "diversity", "sample_seconds_per_image", "sample_nfe")


def parse_steps(text: str) -> list[int]:
    """'10,50,100' -> [10, 50, 100]; anything else is a UserError."""
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        steps = []
    if not steps or min(steps) < 1:
        raise UserError(f"--sampler-steps takes positive integers joined by commas (10,50,100), got {text!r}")
    return steps


def load_run(run_id: str, device_name: str = "auto"):
    """A run's tracker, spec and model restored from its latest checkpoint; returns (tracker, spec, model, state)."""
    saved = open_run(run_id)
    state = saved.latest()
    run = saved.tracker.client.get_run(run_id)
    model = saved.family(saved.spec, pick_device(device_name), run.data.tags.get("precision", "fp32"))
    model.load_state_dict(state["model"])
    return saved.tracker, saved.spec, model, state


def set_bn(spec, model, bn: str | None, option: str = "--bn") -> None:
    """Sample a BatchNorm generator with other statistics than the run's eval.bn; other families refuse."""
    if bn is None:
        return
    if sampling_bn(model) == "n/a":
        raise UserError(f"{spec.model} has no BatchNorm in its sampler; {option} is for dcgan and wgan-gp runs")
    model.bn = bn


def require_sampler(spec, model, option: str) -> None:
    """A user asking a one-pass model (a GAN) for a number of sampling steps gets one clear line."""
    if not hasattr(model, "sampler_steps"):
        raise UserError(f"{spec.model} samples in one network pass; {option} is for ddpm and ldm runs")


def suffix_for(tags: dict, n: int, bn: str) -> str:
    """"" where a score belongs to the run's own curve (same N and BatchNorm statistics as its eval points,
    or the run has none yet); else the suffix of its own metric keys (fid_n500, fid_n500_bn-batch): one
    curve never mixes sample sizes or sampling statistics."""
    own_n, own_bn = tags.get("metrics.eval_samples"), tags.get("metrics.bn", bn)
    if own_n is None:
        return ""
    return (f"_n{n}" if own_n != str(n) else "") + (f"_bn-{bn}" if own_bn != bn else "")


def eval_run(run_id: str, samples: int | None = None, device_name: str = "auto", progress: bool = True,
             sampler_steps: list[int] | None = None, bn: str | None = None) -> dict:
    """Sample from a run's latest checkpoint and log FID/KID/PR into it at the checkpoint's step.

    Scores made like the run's eval points extend its curve (fid, kid_mean, ...); another N or `bn` goes to
    keys of their own (fid_n500, ...), so the curve keeps one N. With sampler_steps (diffusion runs), score
    once per number of sampling steps and log <metric>_vs_steps at step = sampling steps."""
    tracker, spec, model, state = load_run(run_id, device_name)
    if sampler_steps:
        require_sampler(spec, model, "--sampler-steps")
    set_bn(spec, model, bn)
    step = int(state["meter"]["images_seen"])
    n = samples or spec.eval["samples"] or 128
    prepared = data_mod.prepare(spec.data, spec.split, spec.resolution, spec.synthetic_images, progress)
    evaluator = Evaluator(batch_size=spec.eval["batch_size"], progress=progress, precision=spec.eval["precision"])
    real, cached = evaluator.real_features(prepared, spec.eval["real_samples"])
    tags = provenance(evaluator, n, len(real.pool), f"{prepared.name}:{prepared.split}", sampling_bn(model))
    suffix = suffix_for(tracker.client.get_run(run_id).data.tags, n, sampling_bn(model))
    if suffix:  # the run's own provenance stays; this set is described under its suffix
        tags = {f"metrics{suffix}.{k.partition('.')[2]}": v for k, v in tags.items()}
        log.info("N = %d / bn = %s differ from the run's eval points: logged as fid%s, kid_mean%s, ...", n,
                 sampling_bn(model), suffix, suffix)
    tracker.tags({**tags, "metrics.real_stats": "reused from cache" if cached else "computed"})
    if not sampler_steps:
        batches, _ = sample_for_eval(model, n, spec.seed, spec.eval["batch_size"], progress)
        values = score(evaluator.features(batches, total=n, desc="fid"), real, evaluator.weights)
        values["eval_samples"] = n
        tracker.metrics({f"{k}{suffix}": v for k, v in values.items()}, step)
        tracker.flush()
        log.info("run %s at %d images: %s; logged into that run as fid%s, kid_mean%s, ... at step %d", run_id, step,
                 headline(values, n, len(real.pool)), suffix, suffix, step)
        return {"run_id": run_id, "images_seen": step, "logged_as": f"fid{suffix}", "bn": sampling_bn(model),
                "leads": leading_metric(n, len(real.pool)), **values, "kid_x1000": 1000 * values["kid_mean"]}
    sweep = []
    for steps in sampler_steps:
        model.sampler_steps = steps
        batches, seconds = sample_for_eval(model, n, spec.seed, spec.eval["batch_size"], progress)
        values = score(evaluator.features(batches, total=n, desc=f"fid @ {steps} steps"), real, evaluator.weights)
        values.update(sample_seconds_per_image=seconds / n, sample_nfe=model.sample_nfe)
        tracker.metrics({f"{k}_vs_steps": values[k] for k in SWEPT}, steps)
        sweep.append({"sampler_steps": steps, **{k: values[k] for k in SWEPT}})
        log.info("%d sampling steps: FID %.3f, %.3f s/image (logged into run %s as fid_vs_steps at step %d)", steps,
                 values["fid"], seconds / n, run_id, steps)
    tracker.tags({"sampler_sweep.images_seen": step, "sampler_sweep.eval_samples": n,
                  "sampler_sweep.sampler": f"{spec.sampler} eta={spec.sampler_eta}"})
    tracker.flush()
    return {"run_id": run_id, "images_seen": step, "eval_samples": n, "sweep": sweep}


def eval_sets(real: str, fake: str, samples: int | None = None, split: str = "train", resolution: int = 64,
              progress: bool = True) -> dict:
    """FID/KID/PR between two image sets (folders, zips, CelebA layouts or 'synthetic')."""
    real_set = data_mod.prepare(real, split, resolution, progress=progress)
    fake_set = data_mod.prepare(fake, "all", resolution, progress=progress)
    n_fake = min(samples or len(fake_set), len(fake_set))
    n_real = min(samples or len(real_set), len(real_set))
    if min(n_fake, n_real) < MIN_IMAGES:
        raise UserError(f"scoring needs at least {MIN_IMAGES} images a side (precision/recall take each image's "
                        f"{MIN_IMAGES - 1} nearest neighbours in its own set); {fake} gives {n_fake}, {real} {n_real}")
    evaluator = Evaluator(progress=progress)
    real_feats, cached = evaluator.real_features(real_set, n_real)
    fake_feats = evaluator.features(fake_set.images[:n_fake], desc="fake")
    values = score(fake_feats, real_feats, evaluator.weights)
    log.info("%s", headline(values, n_fake, n_real))
    return {"leads": leading_metric(n_fake, n_real), **values, "kid_x1000": 1000 * values["kid_mean"],
            "fake_samples": n_fake, "real_samples": n_real, "real_stats_cached": cached,
            "weights_sha256": evaluator.weights.sha256, "inception_precision": evaluator.precision,
            "is": values.get("is", "unavailable"), "inception_images_per_second": evaluator.images_per_second}
