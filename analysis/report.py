"""`bench report`: MLflow runs -> tables (Markdown + CSV), figures (PNG) and one self-contained
report/index.html with the figures embedded; the folder is also logged as a "report" MLflow run."""

from __future__ import annotations

import base64
import html
import logging
import math
import time
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from analysis import plots, scaling, tables
from analysis.collect import PROVENANCE, collect, comparable
from benchmark.errors import UserError
from benchmark.metrics import SMALL_N, leading_metric
from benchmark.tracking import ensure_experiment

log = logging.getLogger(__name__)

REPORT_EXPERIMENT = "reports"


def _artifacts(client: MlflowClient, run_id: str) -> Path | None:
    from benchmark.tracking import local_path

    return local_path(client.get_run(run_id).info.artifact_uri)


def sweeps(client: MlflowClient, df: pd.DataFrame) -> pd.DataFrame:
    """fid_vs_steps of every run in the table (bench eval --sampler-steps), a row per step count."""
    rows = []
    for run_id, run in df.groupby("run_id", sort=True):
        for m in client.get_metric_history(run_id, "fid_vs_steps"):
            rows.append({"run_id": run_id, "run_name": run["run_name"].iloc[0], "model": run["model"].iloc[0],
                         "sampler_steps": m.step, "fid": m.value})
    return pd.DataFrame(rows, columns=["run_id", "run_name", "model", "sampler_steps", "fid"])


def studies(client: MlflowClient, experiments: list[str] | None) -> pd.DataFrame:
    """One row per Optuna study parent run: best value and params, trials and tuning cost."""
    rows = []
    for exp in client.search_experiments():
        if experiments and exp.name not in experiments:
            continue
        for run in client.search_runs([exp.experiment_id], "tags.`study.parent` = 'true'"):
            m, p = run.data.metrics, run.data.params
            rows.append({"study": p.get("study_name", run.info.run_name), "model": p.get("model"),
                         "trial budget": p.get("trial_budget"), "metric": p.get("metric"),
                         "trials": sum(v for k, v in m.items() if k.startswith("trials_")),
                         "best value": m.get("best_value"),
                         "best params": ", ".join(f"{k[5:]}={v:.3g}" for k, v in sorted(m.items())
                                                  if k.startswith("best_") and k != "best_value"),
                         "tuning device-hours": m.get("tuning_device_hours"), "tuning PFLOPs": m.get("tuning_pflops"),
                         "run_id": run.info.run_id})
    return pd.DataFrame(rows)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}"><figcaption>' \
           f'{html.escape(path.stem.replace("_", " "))}</figcaption></figure>'


def _table(name: str, title: str, table: pd.DataFrame, out: Path, note: str = "") -> str:
    """Write tables/<name>.md and .csv; return the HTML section."""
    (out / "tables").mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "tables" / f"{name}.csv")
    (out / "tables" / f"{name}.md").write_text(f"# {title}\n\n{note}\n\n{tables.to_markdown(table)}")
    body = table.to_html(na_rep="", float_format=lambda v: f"{v:.4g}", border=0, classes="table")
    return f'<section class="table-section" id="{name}"><h3>{html.escape(title)}</h3>' \
           f'<p class="note">{html.escape(note)}</p>{body}</section>'


def _targets(df: pd.DataFrame, metric: str) -> list[float]:
    finals = tables.final_points(df)[metric]
    return sorted({float(f"{v:.3g}") for v in (finals.min() * 1.1, finals.median(), finals.max())})


def _scaling_table(df: pd.DataFrame, axis: str, project_to: float, targets: list[float], metric: str) -> pd.DataFrame:
    name = tables.METRIC_NAMES[metric]
    rows = {}
    for model, runs in df.groupby("model", sort=True):
        fitted = scaling.fit(runs[axis], runs[metric], points=runs["point"] if "point" in runs else None)
        if fitted is None:
            points = runs["point"].nunique() if "point" in runs else len(runs)
            rows[model] = {"fit": f"too few eval points ({points}; need 4 at distinct costs)"}
            continue
        measured = runs[axis].max()
        bounds = fitted.on_bounds
        undetermined = f"not determined by the data (on a bound of the fit: {', '.join(bounds)})"
        at, lo, hi = fitted.fid_at(project_to)
        row = {"fit": f"{name} = {fitted.a_raw:.3g} c^-{fitted.b:.3g} + {fitted.e:.3g} ({fitted.points} points)"
                      + (f"; on a bound of the fit: {', '.join(bounds)}" if bounds else ""),
               f"{name} at {project_to:g} {tables.COST_AXES[axis]} (extrapolated)": (
                   undetermined if bounds else "beyond 1000x the measured cost" if project_to > 1000 * measured
                   else f"{at:.4g} [{lo:.4g}, {hi:.4g}]")}
        for t in targets:
            cost, lo, hi = fitted.cost_for(t)
            row[f"cost to {name} {t:g} (extrapolated)"] = (
                undetermined if bounds
                else "never (the fitted floor is above)" if math.isinf(cost)
                else "beyond 1000x the measured cost" if cost > 1000 * measured
                else f"{cost:.3g} [{lo:.3g}, {hi:.3g}]")
        rows[model] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "model"
    return table


def by_hardware(part: pd.DataFrame) -> pd.DataFrame:
    """The table for the device-hours axis: where runs differ in hardware, a curve becomes a row per hardware
    (device-hours measured on one machine say nothing of another's)."""
    if "hardware" not in part or part["hardware"].nunique(dropna=False) < 2:
        return part
    return part.assign(model=part["model"] + " on " + part["hardware"].fillna("unknown hardware"))


def lead_metric(part: pd.DataFrame) -> str:
    """The table column of the metric that leads at this set's N (metrics.leading_metric): KID x 1000 below
    SMALL_N samples, where FID is biased upwards, else FID."""
    return "kid_x1000" if leading_metric(int(part["eval_samples"].iloc[0]), _real_n(part)) == "kid_mean" else "fid"


def _real_n(part: pd.DataFrame) -> int | None:
    real = part["real_samples"].iloc[0] if "real_samples" in part else float("nan")
    return None if pd.isna(real) else int(real)


def _metric_set(part: pd.DataFrame, tag: str, out: Path, project_to: float) -> list[str]:
    """The tables and figures of one set of numbers made the same way, led by the metric valid at its N."""
    figures = out / "figures"
    lead = lead_metric(part)
    name, n = tables.METRIC_NAMES[lead], int(part["eval_samples"].iloc[0])
    real = _real_n(part)
    sizes = f"N = {n} generated" + (f" vs {real} real" if real is not None else "") + " images"
    why = (f"{sizes}: below {SMALL_N:,} (the smaller set decides) FID is biased upwards (Binkowski et al. 2018), "
           "so KID (unbiased; mean ± its std over 100 subsets, x 1000) leads and FID is shown beside it as a trend."
           if lead == "kid_x1000" else f"{sizes}: FID leads, KID is shown beside it.")
    curves = ("A row is one training spec (a curve); several seeds of it give mean ± spread over seeds; "
              "specs of one family that differ are rows labelled by what differs.")
    flag = f" (biased upwards at N = {n}: a trend)" if lead == "kid_x1000" else ""
    machines = sorted(part["hardware"].dropna().unique()) if "hardware" in part else []
    if len(machines) > 1:
        curves += (" Device-hours depend on the hardware, so on that axis each curve is a row per hardware "
                   f"({'; '.join(machines)}); FLOPs and images pool them.")
    sections = [f"<p class='note lead'>{html.escape(why)} {html.escape(curves)}</p>"]
    targets = _targets(part, lead)
    whole, timed = part, by_hardware(part)
    for axis in ("device_hours", "pflops"):
        unit = tables.COST_AXES[axis]
        data = timed if axis == "device_hours" else whole
        sections.append(_table(f"{lead}_at_equal_{axis}{tag}", f"{name} at equal cost ({unit})",
                               tables.quality_at_equal_cost(data, axis, metric=lead), out,
                               f"{why} Interpolated linearly in log-cost between eval points; empty = not measured "
                               f"at that budget (never extrapolated). {curves}"))
        if lead != "fid":
            sections.append(_table(f"fid_at_equal_{axis}{tag}", f"FID at equal cost ({unit}){flag}",
                                   tables.quality_at_equal_cost(data, axis, metric="fid"), out,
                                   f"FID at N = {n} is biased upwards: it ranks runs made the same way at best."))
        sections.append(_table(f"cost_to_reach_{axis}{tag}", f"Cost ({unit}) to reach a {name}",
                               tables.cost_to_reach_table(data, targets, axis, lead), out,
                               f"First cost at which the interpolated {name} reaches the target; empty = not reached."))
        sections.append(_table(f"pareto_{axis}{tag}", f"Pareto front: {name} vs {unit}",
                               tables.pareto_front(data, axis, lead).set_index("model"), out,
                               "Eval points no other point beats on both."))
        sections.append(_img(plots.quality_vs_cost(data, axis, figures / f"{lead.split('_')[0]}_vs_{axis}{tag}.png",
                                                   lead)))
    if lead != "fid":
        sections.append(_img(plots.quality_vs_cost(timed, "device_hours", figures / f"fid_vs_device_hours{tag}.png",
                                                   "fid", flag)))
    else:
        sections.append(_img(plots.quality_vs_cost(timed, "device_hours", figures / f"kid_vs_device_hours{tag}.png",
                                                   "kid_x1000")))
    sections.append(_table(f"pareto_sampling{tag}", f"Pareto front: {name} vs sampling seconds per image",
                           tables.pareto_front(part, "sample_seconds_per_image", lead).set_index("model"), out,
                           "Every eval point; sampling cost is per generated image on the run's device."))
    sections.append(_img(plots.quality_vs_sampling_cost(tables.final_points(part),
                                                        figures / f"{lead.split('_')[0]}_vs_sampling_cost{tag}.png",
                                                        lead)))
    sections.append(_table(f"final{tag}", "Every run at the end of its budget",
                           tables.final_points(part)[["model", "run_name", "budget", "seed", "images_seen",
                                                      "epochs", "device_hours", "hardware", "pflops", "sample_nfe",
                                                      "sample_seconds_per_image", "kid_x1000", "kid_x1000_std",
                                                      "fid", "precision", "recall", "bn"]].set_index("model"), out,
                           f"{why} bn: the BatchNorm statistics the GANs sampled with (n/a: no BatchNorm)."))
    sections.append(_table(f"scaling{tag}", f"Scaling fit and projections of {name} (EXTRAPOLATION)",
                           _scaling_table(timed, "device_hours", project_to, targets, lead), out,
                           f"{name}(c) = a c^-b + e fitted per curve over its eval points; [5%, 95%] from a residual "
                           "bootstrap. Beyond the measured costs: a projection, not a measurement."))
    return sections


def build(out: Path, experiments: list[str] | None = None, group: bool = False, project_to: float = 58.0,
          log_run: bool = True, include_trials: bool = False) -> Path:
    """Write out/index.html, out/tables/*, out/figures/*; returns the index path."""
    client = MlflowClient()
    df = collect(experiments, client, include_trials)
    if df.empty:
        raise UserError("no runs with FID to report" + (f" in {', '.join(experiments)}" if experiments else ""))
    out = Path(out)
    figures = out / "figures"
    sections = []
    for i, part in enumerate(comparable(df, group)):
        tag = "" if i == 0 else f"_{i + 1}"
        made = ", ".join(f"{k} {part[k].iloc[0]}" for k in PROVENANCE if k != "weights_sha256")
        modes = sorted(set(part["bn"]) - {"n/a"})
        made += f", GANs sampled with {'/'.join(modes)} BatchNorm statistics" if modes else ""
        sections.append(f"<h2>Metric set {i + 1}</h2><p class='note'>numbers made the same way: {html.escape(made)}, "
                        f"Inception weights {str(part['weights_sha256'].iloc[0])[:12]}</p>")
        sections += _metric_set(part, tag, out, project_to)

    swept = sweeps(client, df)
    if not swept.empty:
        figure = plots.fid_vs_steps(swept, figures / "fid_vs_sampling_steps.png")
        sections.append("<h2>Sampling steps</h2>" + _img(figure))
    study_table = studies(client, experiments)
    if not study_table.empty:
        sections.append("<h2>Studies</h2>")
        sections.append(_table("studies", "Tuning cost and best settings per study", study_table.set_index("study"),
                               out))
        untuned = tables.final_points(df[df["parent_run"].isna()])
        sections.append(_table("seed_vs_tuned", "Untuned runs (seed settings) at the end of their budgets",
                               untuned[["model", "run_name", "budget", "lr_g", "lr_d", "lr", "beta1", "beta2",
                                        "fid"]].set_index("model"), out,
                               "Compare with each study's best value at its trial budget above."))
        for run_id in study_table["run_id"]:
            folder = _artifacts(client, run_id)
            for png in sorted((folder / "plots").glob("*.png")) if folder else []:
                sections.append(_img(png))

    sections.append("<h2>Runs</h2>")
    for run_id, run in list(tables.final_points(df).groupby("run_id", sort=False))[:12]:
        folder = _artifacts(client, run_id)
        if folder is None:
            continue
        name = f"{run['model'].iloc[0]} {run['run_name'].iloc[0]}"
        sections.append(f"<h3>{html.escape(name)}</h3>")
        grids = sorted((folder / "samples").glob("grid_*.png"))
        if grids:
            sections.append(_img(plots.progression_strip(grids, figures / f"samples_{run_id[:8]}.png", name)))
        if (folder / "plots" / "losses.png").is_file():
            sections.append(_img(folder / "plots" / "losses.png"))

    title = "facebench report" + (f": {', '.join(experiments)}" if experiments else "")
    index = out / "index.html"
    index.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}}td,th{{border-bottom:1px solid #ddd;padding:3px 8px;
text-align:right}}figure{{margin:1em 0}}img{{max-width:100%}}.note{{color:#666;font-size:13px}}</style></head>
<body><h1>{html.escape(title)}</h1><p class="note">{len(df)} eval points of {df['run_id'].nunique()} runs
({', '.join(sorted(df['model'].dropna().unique()))}); made {time.strftime('%Y-%m-%d %H:%M')}.
Lower FID/KID is better. Below 2,000 generated images per point KID leads and FID is shown as a biased
trend; neither is comparable with papers' 50,000-sample FIDs. Study trials are left out unless asked for.</p>
{''.join(sections)}
<script>/* how many figures really decoded, for headless checks and for readers of a broken copy */
addEventListener("load", () => document.body.setAttribute("data-figures-rendered",
  [...document.images].filter(i => i.complete && i.naturalWidth > 0).length));</script></body></html>
""")
    if log_run:
        _log_report(out, experiments)
    return index


def _log_report(out: Path, experiments: list[str] | None) -> None:
    """The report folder as artifacts of a run in the "reports" experiment."""
    client = MlflowClient()
    exp_id = ensure_experiment(client, REPORT_EXPERIMENT)
    run = client.create_run(exp_id, run_name="report", tags={"report": "true",
                                                             "report.experiments": ",".join(experiments or ["all"])})
    client.log_artifacts(run.info.run_id, str(out))
    client.set_terminated(run.info.run_id)
    log.info("logged as MLflow run %s in experiment %r", run.info.run_id, REPORT_EXPERIMENT)
