"""`bench compare`: the headline workflow. The same data, budget and evaluation for each model and seed,
one MLflow experiment for them all, then the report."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from benchmark.errors import UserError

log = logging.getLogger(__name__)


def split_overrides(models: list[str], overrides: tuple[str, ...]) -> dict[str, list[str]]:
    """`key=value` applies to every model, `model:key=value` to that model only."""
    per_model: dict[str, list[str]] = {m: [] for m in models}
    for item in overrides:
        target, sep, rest = item.partition(":")
        if sep and "=" not in target:
            if target not in per_model:
                raise UserError(f"--set {item!r} names model {target!r}, which is not in --models")
            per_model[target].append(rest)
        else:
            for m in models:
                per_model[m].append(item)
    return per_model


def compare(models: list[str], budget: str, data: str | None, seeds: int, overrides: tuple[str, ...],
            experiment_name: str | None, out: Path | None, device: str = "auto", progress: bool = True) -> Path:
    from analysis.report import build
    from benchmark import runner
    from benchmark.models import family, resolve
    from benchmark.spec import build_spec

    specs = []
    per_model = split_overrides(models, overrides)
    for typed in models:  # every spec is validated before the first run starts
        name, experiment = resolve(typed, {})
        _, defaults = family(name)
        for seed in range(seeds):
            specs.append((typed, build_spec(name, defaults, experiment, per_model[typed],
                                            {"data": data, "budget": budget, "seed": seed})))
    experiment_name = experiment_name or f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(out) if out else Path("reports") / experiment_name
    failed = []
    for i, (typed, spec) in enumerate(specs, 1):
        log.info("[%d/%d] %s seed %d, budget %s", i, len(specs), typed, spec.seed, budget)
        try:
            runner.start(spec, device, experiment_name, None, progress,
                         extra_tags={"compare": experiment_name, **({"model_alias": typed} if typed != spec.model
                                                                    else {})})
        except UserError:
            raise
        except Exception as err:  # one model failing (e.g. diverging) must not lose the others
            log.warning("%s seed %d failed: %s", typed, spec.seed, err)
            failed.append(runner.default_run_name(spec, {"model_alias": typed}))
    if failed:
        log.warning("failed runs (kept in MLflow as FAILED): %s", ", ".join(failed))
    return build(out, [experiment_name])
