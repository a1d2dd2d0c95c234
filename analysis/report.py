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

from analysis import plots, scaling, tables, tuning
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


def _img(path: Path, caption: str) -> str:
    """A figure embedded in the page, with a caption that says what it shows and how it was made."""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure id="fig-{path.stem}"><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">' \
           f'<figcaption>{html.escape(caption)}</figcaption></figure>'


def _number(v: float) -> str:
    """Counts as counts (3,968 images, not 3968.0), other values to 4 significant digits."""
    return f"{v:,.0f}" if float(v).is_integer() and abs(v) < 1e15 else f"{v:.4g}"


def _table(name: str, title: str, table: pd.DataFrame, out: Path, note: str = "", caption: str | None = None) -> str:
    """Write tables/<name>.md and .csv (the .md with the whole note: it is read alone); return the HTML section,
    captioned with `caption` where the page already said the rest of the note once, at the top."""
    (out / "tables").mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "tables" / f"{name}.csv")
    (out / "tables" / f"{name}.md").write_text(f"# {title}\n\n{note}\n\n{tables.to_markdown(table)}")
    # the index as a first column: to_html would give its name a header row of its own, empty but for it
    body = table.reset_index().to_html(index=False, na_rep="", float_format=_number, border=0, classes="table")
    return f'<section class="table-section" id="{name}"><h3>{html.escape(title)}</h3>' \
           f'<p class="note">{html.escape(caption if caption is not None else note)}</p>{body}</section>'


def _targets(df: pd.DataFrame, metric: str) -> tuple[list[float], str]:
    """Targets inside what was measured: the best value any run reached and the worst value a run ended on,
    and halfway between (2 significant digits), so every one is reached by some run."""
    finals = tables.final_points(df)[metric]
    best, worst = float(df[metric].min()), float(finals.max())
    targets = sorted({_round_up(v) for v in (best, (best + worst) / 2, worst)})
    why = (f"Targets from the measured range: {best:.4g}, the best any run reached, {worst:.4g}, the worst a run "
           "ended on, and halfway between (rounded up to 2 significant digits, so each is reached).")
    return targets, why


def _round_up(v: float) -> float:
    return math.ceil(v * 100) / 100 if v <= 0 else tables.round_significant(v, 2, math.ceil)


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


PR_MIN = 500  # images (the smaller set) below which precision and recall are left out of the tables


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
        timed_on = (" Device-hours depend on the hardware, so on that axis each curve is a row per hardware "
                    f"({'; '.join(machines)}); FLOPs and images pool them.")
        per_hw = " (a row per hardware)"
    elif machines:  # one machine: still say which, or the numbers read as if any hardware gave them
        timed_on, per_hw = f" Device-hours measured on {machines[0]}.", f" (measured on {machines[0]})"
    else:
        timed_on = per_hw = ""
    curves += timed_on
    targets, target_why = _targets(part, lead)
    sections = [f"<p class='note lead'>{html.escape(why)} {html.escape(curves)} Tables interpolate linearly in "
                "log-cost between eval points and leave a cell empty where a run did not measure (never "
                f"extrapolated). {html.escape(target_why)}</p>"]
    whole, timed = part, by_hardware(part)
    for axis in ("device_hours", "pflops"):
        unit = tables.COST_AXES[axis]
        data = timed if axis == "device_hours" else whole
        rows = per_hw if axis == "device_hours" else ""
        hw = timed_on if axis == "device_hours" else ""
        sections.append(_table(f"{lead}_at_equal_{axis}{tag}", f"{name} at equal cost ({unit})",
                               tables.quality_at_equal_cost(data, axis, metric=lead), out,
                               f"{why} Interpolated linearly in log-cost between eval points; empty = not measured "
                               f"at that budget (never extrapolated). {curves}",
                               f"{name} of each curve{rows} at a ladder of {unit} budgets (mean ± spread over seeds, "
                               f"or ± KID's own std for one seed)."))
        if lead != "fid":
            sections.append(_table(f"fid_at_equal_{axis}{tag}", f"FID at equal cost ({unit}){flag}",
                                   tables.quality_at_equal_cost(data, axis, metric="fid"), out,
                                   f"FID at N = {n} is biased upwards: it ranks runs made the same way at best.{hw}"))
        sections.append(_table(f"cost_to_reach_{axis}{tag}", f"Cost ({unit}) to reach a {name}",
                               tables.cost_to_reach_table(data, targets, axis, lead), out,
                               f"First cost at which the interpolated {name} reaches the target; empty = not reached. "
                               f"{target_why}{hw}", f"First {unit} at which each curve's {name} reaches the target; "
                               f"empty = not reached.{hw}"))
        sections.append(_table(f"pareto_{axis}{tag}", f"Pareto front: {name} vs {unit}",
                               tables.pareto_front(data, axis, lead).set_index("model"), out,
                               f"Eval points no other point beats on both.{hw}"))
        sections.append(_img(plots.quality_vs_cost(data, axis, figures / f"{lead.split('_')[0]}_vs_{axis}{tag}.png",
                                                   lead),
                             f"{name} against {unit}{per_hw if axis == 'device_hours' else ''}: every eval point of "
                             f"every run, a line per curve, the Pareto front marked; {sizes}."))
    if lead != "fid":
        sections.append(_img(plots.quality_vs_cost(timed, "device_hours", figures / f"fid_vs_device_hours{tag}.png",
                                                   "fid", flag),
                             f"FID against device-hours, as above; at N = {n} FID is biased upwards: a trend."))
    else:
        sections.append(_img(plots.quality_vs_cost(timed, "device_hours", figures / f"kid_vs_device_hours{tag}.png",
                                                   "kid_x1000"), "KID x 1000 against device-hours, as above."))
    finals = tables.final_points(part)
    sections.append(_table(f"pareto_sampling{tag}", f"Pareto front: {name} vs sampling seconds per image",
                           tables.pareto_front(finals, "sample_seconds_per_image", lead).set_index("model"), out,
                           "Each run at the end of its budget; sampling cost is per generated image on the run's "
                           "device."))
    sections.append(_img(plots.quality_vs_sampling_cost(finals,
                                                        figures / f"{lead.split('_')[0]}_vs_sampling_cost{tag}.png",
                                                        lead),
                         f"{name} at the end of each run against the seconds it takes to sample one image on its "
                         "device (log scale): the price of quality at generation time."))
    columns = ["model", "run_name", "budget", "seed", "images_seen", "epochs", "device_hours", "hardware", "pflops",
               "sample_nfe", "sample_seconds_per_image", "kid_x1000", "kid_x1000_std", "fid", "precision", "recall",
               "diversity", "bn"]
    smaller = min(n, real) if real is not None else n
    if smaller < PR_MIN:  # k-NN manifolds of a few hundred points: every sample lands outside them
        columns = [c for c in columns if c not in ("precision", "recall")]
        pr = (f" Precision and recall are left out: at N = {smaller:,} (below {PR_MIN:,}) their k-nearest-neighbour "
              "manifolds (Kynkäänniemi et al. 2019) are too sparse to mean much; each run logs them in MLflow.")
    else:
        pr = (" Precision: the share of samples inside the real images' manifold (fidelity); recall: the share of real "
              "images inside the samples' (diversity).")
    pr += (" diversity: the samples' mean pairwise Inception distance over the real images' (1: as varied as the "
           "real faces; well below 1: samples more alike than faces are, a collapse onto a few faces where they are "
           "faces, whatever KID says; near 1 does not rule one out: one face in many tones reads nearly as varied as "
           "faces do, and precision reads that better).")
    sections.append(_table(f"final{tag}", "Every run at the end of its budget", finals[columns].set_index("model"),
                           out, f"{why} bn: the BatchNorm statistics the GANs sampled with (n/a: no BatchNorm).{pr}",
                           f"bn: the BatchNorm statistics the GANs sampled with (n/a: no BatchNorm).{pr}"))
    sections.append(_table(f"scaling{tag}", f"Scaling fit and projections of {name} (EXTRAPOLATION)",
                           _scaling_table(timed, "device_hours", project_to, targets, lead), out,
                           f"{name}(c) = a c^-b + e fitted per curve over its eval points; [5%, 95%] from a residual "
                           f"bootstrap. Beyond the measured costs: a projection, not a measurement.{timed_on}"))
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
    pooled = sorted(df["experiment"].dropna().unique())
    if not experiments:  # every experiment of the store: say which, so nobody mistakes it for one compare
        log.info("no --experiment: pooled the runs of %d experiment(s): %s", len(pooled), ", ".join(pooled))
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
        sections.append("<h2>Sampling steps</h2>" + _img(figure, "FID of one diffusion checkpoint against the number "
                                                           "of sampling steps (bench eval --sampler-steps): what "
                                                           "fewer network passes per image cost in quality."))
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
        sections += _tuning_curves(client, study_table, out)
        for run_id in study_table["run_id"]:
            folder = _artifacts(client, run_id)
            for png in sorted((folder / "plots").glob("*.png")) if folder else []:
                sections.append(_img(png, f"Optuna's {png.stem.replace('_', ' ')} of study run {run_id[:8]}."))

    sections.append("<h2>Runs</h2>")
    for run_id, run in list(tables.final_points(df).groupby("run_id", sort=False))[:12]:
        folder = _artifacts(client, run_id)
        if folder is None:
            continue
        name = f"{run['model'].iloc[0]} {run['run_name'].iloc[0]}"
        sections.append(f"<h3>{html.escape(name)}</h3>")
        grids = sorted((folder / "samples").glob("grid_*.png"))
        if grids:
            sections.append(_img(plots.progression_strip(grids, figures / f"samples_{run_id[:8]}.png", name),
                                 f"{name}: its sample grids at each eval point, labelled with images seen (fixed "
                                 "noise, so the same latent row by row)."))
        if (folder / "plots" / "losses.png").is_file():
            sections.append(_img(folder / "plots" / "losses.png", f"{name}: losses per iteration and mean per "
                                 "whole epoch, as the seed report plots them."))

    title = "facebench report" + (f": {', '.join(experiments)}" if experiments else "")
    index = out / "index.html"
    index.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}}td,th{{border-bottom:1px solid #ddd;padding:3px 8px;
text-align:right}}figure{{margin:1em 0}}img{{max-width:100%}}.note{{color:#666;font-size:13px}}</style></head>
<body><h1>{html.escape(title)}</h1><p class="note">{len(df)} eval points of {df['run_id'].nunique()} runs
({', '.join(sorted(df['model'].dropna().unique()))}) from the MLflow experiment(s) {html.escape(', '.join(pooled))};
made {time.strftime('%Y-%m-%d %H:%M')}.
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


def _tuning_curves(client: MlflowClient, study_table: pd.DataFrame, out: Path) -> list[str]:
    """The expected best after k trials of each study, against k and against the device-hours k trials cost:
    "the tuned model" read with what tuning it cost."""
    curves, rows, metrics = {}, [], set()
    for _, study in study_table.iterrows():
        metric = study["metric"] or "kid_mean"
        trials = tuning.study_trials(client, study["run_id"], metric)
        curve = tuning.tuning_curve(trials, 1000.0 if metric == "kid_mean" else 1.0)
        if curve.empty:
            continue
        label = f"{study['study']} ({study['model']}, {study['trial budget']} a trial)"
        curves[label] = curve
        metrics.add("kid_x1000" if metric == "kid_mean" else "fid")
        for k in sorted({1, 2, 5, 10, len(curve)} & set(curve["k"])):
            row = curve[curve["k"] == k].iloc[0]
            band = f"{row['mean']:.4g} [{row['lo']:.4g}, {row['hi']:.4g}]"
            rows.append({"study": label, "k": k, "expected best": band,
                         "device-hours of k trials": row["device_hours"]})
    if not curves or len(metrics) > 1:  # one figure compares like with like
        return []
    (metric,) = metrics
    name = tables.METRIC_NAMES[metric]
    how = (f"Expected best {name} after k trials: the best of k trials drawn with replacement from each study's "
           "complete trials, over 4,000 bootstrap draws, [5%, 95%]; the cost of k trials is k times the mean "
           "device-hours of a complete one, failed and pruned trials' cost included (Lucic et al. 2018).")
    figure = plots.best_after_k_trials(curves, out / "figures" / "best_after_k_trials.png", metric)
    return [_table("best_after_k_trials", f"Best {name} after k trials", pd.DataFrame(rows).set_index("study"), out,
                   how), _img(figure, how)]


def _log_report(out: Path, experiments: list[str] | None) -> None:
    """The report folder as artifacts of a run in the "reports" experiment."""
    client = MlflowClient()
    exp_id = ensure_experiment(client, REPORT_EXPERIMENT)
    run = client.create_run(exp_id, run_name="report", tags={"report": "true",
                                                             "report.experiments": ",".join(experiments or ["all"])})
    client.log_artifacts(run.info.run_id, str(out))
    client.set_terminated(run.info.run_id)
    log.info("logged as MLflow run %s in experiment %r", run.info.run_id, REPORT_EXPERIMENT)
