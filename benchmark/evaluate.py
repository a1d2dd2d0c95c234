"""`bench eval`: score a run's latest checkpoint into that run, or any two image sets against each other."""

from __future__ import annotations

import logging

from benchmark import checkpoint
from benchmark import data as data_mod
from benchmark.errors import UserError
from benchmark.metrics import SMALL_N, Evaluator, provenance, sample_for_eval, score
from benchmark.models import family
from benchmark.models.common import pick_device
from benchmark.spec import build_spec, load_toml
from benchmark.tracking import Tracker
from benchmark.train import CHECKPOINT

log = logging.getLogger(__name__)


SWEPT = ("fid", "kid_mean", "kid_std", "precision", "recall", "sample_seconds_per_image", "sample_nfe")


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
    tracker = Tracker(run_id) if _exists(run_id) else None
    if tracker is None:
        raise UserError(f"no MLflow run {run_id!r} in this tracking store")
    ckpt_path = tracker.dir / CHECKPOINT
    if not ckpt_path.is_file():
        raise UserError(f"run {run_id} has no checkpoint yet ({ckpt_path})")
    saved = load_toml(tracker.dir / "spec.toml")
    cls, defaults = family(saved["model"])
    spec = build_spec(saved["model"], defaults, saved)
    state = checkpoint.load(ckpt_path)
    run = tracker.client.get_run(run_id)
    model = cls(spec, pick_device(device_name), run.data.tags.get("precision", "fp32"))
    model.load_state_dict(state["model"])
    return tracker, spec, model, state


def require_sampler(spec, model, option: str) -> None:
    """A user asking a one-pass model (a GAN) for a number of sampling steps gets one clear line."""
    if not hasattr(model, "sampler_steps"):
        raise UserError(f"{spec.model} samples in one network pass; {option} is for ddpm and ldm runs")


def eval_run(run_id: str, samples: int | None = None, device_name: str = "auto", progress: bool = True,
             sampler_steps: list[int] | None = None) -> dict:
    """Sample from a run's latest checkpoint and log FID/KID/PR into it at the checkpoint's step.

    With sampler_steps (diffusion runs), score once per number of sampling steps and log each metric as
    <metric>_vs_steps at step = sampling steps: the quality-versus-sampling-cost curve of that checkpoint."""
    tracker, spec, model, state = load_run(run_id, device_name)
    if sampler_steps:
        require_sampler(spec, model, "--sampler-steps")
    step = int(state["meter"]["images_seen"])
    n = samples or spec.eval["samples"] or 128
    prepared = data_mod.prepare(spec.data, spec.split, spec.resolution, spec.synthetic_images, progress)
    evaluator = Evaluator(batch_size=spec.eval["batch_size"], progress=progress)
    real, cached = evaluator.real_features(prepared, spec.eval["real_samples"])
    tracker.tags({**provenance(evaluator.weights, n, len(real.pool), f"{prepared.name}:{prepared.split}"),
                  "metrics.real_stats": "reused from cache" if cached else "computed"})
    if not sampler_steps:
        batches, _ = sample_for_eval(model, n, spec.seed, spec.eval["batch_size"])
        values = score(evaluator.features(batches, total=n, desc="fid"), real, evaluator.weights)
        values["eval_samples"] = n
        tracker.metrics(values, step)
        tracker.flush()
        return {"run_id": run_id, "images_seen": step, **values}
    sweep = []
    for steps in sampler_steps:
        model.sampler_steps = steps
        batches, seconds = sample_for_eval(model, n, spec.seed, spec.eval["batch_size"])
        values = score(evaluator.features(batches, total=n, desc=f"fid @ {steps} steps"), real, evaluator.weights)
        values.update(sample_seconds_per_image=seconds / n, sample_nfe=model.sample_nfe)
        tracker.metrics({f"{k}_vs_steps": values[k] for k in SWEPT}, steps)
        sweep.append({"sampler_steps": steps, **{k: values[k] for k in SWEPT}})
        log.info("%d sampling steps: FID %.3f, %.3f s/image", steps, values["fid"], seconds / n)
    tracker.tags({"sampler_sweep.images_seen": step, "sampler_sweep.eval_samples": n,
                  "sampler_sweep.sampler": f"{spec.sampler} eta={spec.sampler_eta}"})
    tracker.flush()
    return {"run_id": run_id, "images_seen": step, "eval_samples": n, "sweep": sweep}


def _exists(run_id: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient().get_run(run_id)
        return True
    except MlflowException:
        return False


def eval_sets(real: str, fake: str, samples: int | None = None, split: str = "train", resolution: int = 64,
              progress: bool = True) -> dict:
    """FID/KID/PR between two image sets (folders, zips, CelebA layouts or 'synthetic')."""
    real_set = data_mod.prepare(real, split, resolution, progress=progress)
    fake_set = data_mod.prepare(fake, "all", resolution, progress=progress)
    n_fake = min(samples or len(fake_set), len(fake_set))
    n_real = min(samples or len(real_set), len(real_set))
    if min(n_fake, n_real) < 2:
        raise UserError("need at least 2 images on each side")
    if n_fake < SMALL_N:
        log.warning("%d generated images: FID at small N is biased upwards; compare only at equal N", n_fake)
    evaluator = Evaluator(progress=progress)
    real_feats, cached = evaluator.real_features(real_set, n_real)
    fake_feats = evaluator.features(fake_set.images[:n_fake], desc="fake")
    values = score(fake_feats, real_feats, evaluator.weights)
    return {**values, "fake_samples": n_fake, "real_samples": n_real, "real_stats_cached": cached,
            "weights_sha256": evaluator.weights.sha256, "is": values.get("is", "unavailable"),
            "inception_images_per_second": evaluator.images_per_second}
