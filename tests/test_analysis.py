"""Analysis from real MLflow runs made by short trainings: the tidy table, interpolation at equal cost,
Pareto fronts, the refusal to mix metrics made differently, `bench compare` / `bench report`, the report
rendered in headless Chromium, and the MLflow UI listing the runs and their FIDs."""

import math
import os
import re
import socket
import subprocess
import sys
import urllib.request

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis import scaling, tables
from analysis.collect import collect, comparable
from benchmark.errors import UserError
from benchmark.runs_view import view
from conftest import chromium, free_port

TINY = ["--set", "batch_size=16", "--set", "eval.samples=8", "--set", "eval.real_samples=16", "--set",
        "eval.points=4", "--set", "eval.grid=4", "--set", "dcgan:ngf=8", "--set", "dcgan:ndf=8", "--set",
        "wgan-gp:ngf=8", "--set", "wgan-gp:ndf=8", "--set", "wgan-gp:n_critic=2", "--set", "ddpm:ch=8", "--set",
        "ddpm:sampler_steps=4", "--set", "ddpm:num_res_blocks=1", "--set", "ddpm:attn_resolutions=[8]", "--set",
        "eval.precision=fp32", "--quiet"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, celeba, bench_cache):
    """`bench compare` of three families on real faces, a sampling-steps sweep, `bench report`, and one
    more run whose metrics are made with another N and bf16 Inception features: a real MLflow store shared by
    this module's tests."""
    folder = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "BENCH_CACHE": str(bench_cache),
           "TORCH_HOME": str(folder / "torch-home")}

    def bench(*args, check=True, prefix=()):
        proc = subprocess.run([*prefix, sys.executable, "-m", "benchmark.cli", *args], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0 or not check, proc.stderr[-3000:]
        return proc

    bench("compare", "--models", "dcgan,wgan-gp,ddpm", "--budget", "128img", "--data", str(celeba),
          "--experiment-name", "cmp", "--out", "report", *TINY)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("cmp")
    (ddpm,) = client.search_runs([exp.experiment_id], "params.model = 'ddpm'")
    sweep = bench("eval", ddpm.info.run_id, "--sampler-steps", "2,4", "--samples", "8")
    bench("run", "--model", "dcgan", "--budget", "32img", "--data", str(celeba), "--experiment-name", "other-n",
          "--set", "ngf=8", "--set", "ndf=8", "--set", "batch_size=16", "--set", "eval.samples=6",
          "--set", "eval.real_samples=16", "--set", "eval.points=1", "--set", "eval.precision=bf16", "--quiet")
    # curves: two seeds of one dcgan spec (the second on one core only: other hardware), another spec, and a
    # study trial (left out of curves by default)
    curve = ["--model", "dcgan", "--budget", "64img", "--data", str(celeba), "--experiment-name", "curves",
             "--set", "ngf=8", "--set", "ndf=8", "--set", "batch_size=16", "--set", "eval.samples=8",
             "--set", "eval.real_samples=16", "--set", "eval.points=2", "--set", "eval.grid=4", "--set",
             "eval.precision=fp32", "--quiet"]
    for extra, prefix in ((["--seed", "0"], ()), (["--seed", "1"], ("taskset", "-c", "0")),
                          (["--seed", "0", "--set", "lr_g=2e-4"], ())):
        bench("run", *curve, *extra, prefix=prefix)
    bench("study", *[a for a in curve if a != "--budget" and a != "64img"], "--trial-budget", "64img",
          "--trials", "1", "--pruner", "none", "--storage", str(folder / "journal.log"))
    return {"uri": uri, "folder": folder, "bench": bench, "experiment_id": exp.experiment_id, "client": client,
            "ddpm": ddpm.info.run_id, "sweep": sweep.stdout}


def test_a_curve_is_one_spec_its_seeds_pooled_and_trials_stay_out(store):
    df = collect(["curves"], store["client"])
    assert sorted(df["model"].unique()) == ["dcgan lr_g=0.0001", "dcgan lr_g=0.0002"]
    assert set(df["family"]) == {"dcgan"} and df["run_id"].nunique() == 3  # the study trial is left out
    seeds = df[df["model"] == "dcgan lr_g=0.0001"].groupby("run_id")
    for axis in ("device_hours", "pflops"):
        budgets = tables.ladder(df, axis)
        table = tables.quality_at_equal_cost(df, axis, budgets, metric="kid_x1000")
        pooled, single = table.loc["dcgan lr_g=0.0001"], table.loc["dcgan lr_g=0.0002"]
        # mean ± spread over the two seeds exactly at the budgets both measured (device-hours differ from run
        # to run, so on a busy machine there may be none; FLOPs do not, so there are some)
        both = [all(run[axis].min() <= b <= run[axis].max() for _, run in seeds) for b in budgets]
        assert [("(n=2 seeds)" in cell) for cell in pooled] == both, (pooled, both)
        assert axis == "device_hours" or any(both)
        assert not any("seeds" in cell for cell in single) and any("±" in cell for cell in single)  # KID's own std
    with_trials = collect(["curves"], store["client"], include_trials=True)
    assert with_trials["run_id"].nunique() == 4 and with_trials["model"].nunique() == 3


def test_device_hours_of_other_hardware_are_never_pooled_but_flops_are(store, tmp_path):
    """The two seeds of one spec ran on 2 cores and on 1 (taskset -c 0): on the device-hours axis the report
    gives each hardware its own row and names both; on FLOPs they are one curve, mean ± spread."""
    store["bench"]("report", "--experiment", "curves", "--out", str(tmp_path / "r"))
    timed = pd.read_csv(tmp_path / "r" / "tables" / "kid_x1000_at_equal_device_hours.csv", index_col=0)
    counted = pd.read_csv(tmp_path / "r" / "tables" / "kid_x1000_at_equal_pflops.csv", index_col=0)
    rows = [m for m in timed.index if m.startswith("dcgan lr_g=0.0001 on ")]
    assert len(rows) == 2 and any(", 1 cores," in m for m in rows) and not any("seeds" in str(c) for c in
                                                                                 timed.loc[rows].to_numpy().ravel())
    assert "dcgan lr_g=0.0001" in counted.index
    assert any("(n=2 seeds)" in str(c) for c in counted.loc["dcgan lr_g=0.0001"])
    page = (tmp_path / "r" / "index.html").read_text()
    assert "Device-hours depend on the hardware" in page and all(m.partition(" on ")[2] in page for m in rows)


def test_a_report_on_one_machine_names_it_beside_every_device_hours_table(store, cmp_table):
    """Device-hours say nothing without their hardware: with one machine too, each table on that axis names it
    (the .md is read alone) and FLOPs tables stay machine-free but for the shared note."""
    (machine,) = cmp_table["hardware"].unique()
    tables_dir = store["folder"] / "report" / "tables"
    timed = sorted(tables_dir.glob("*device_hours*.md")) + [tables_dir / "scaling.md"]
    assert len(timed) == 5, timed  # KID and FID at equal cost, cost to reach, Pareto front, scaling
    for md in timed:
        assert f"Device-hours measured on {machine}." in md.read_text(), md.name
    assert "measured on" not in (tables_dir / "pareto_pflops.md").read_text()
    assert f"(measured on {machine})" in (store["folder"] / "report" / "index.html").read_text()


def test_the_ladder_rounds_its_end_rungs_inwards():
    """Rungs at two significant digits where that stays inside the runs' shared range: the lowest rung sits on
    the first cost of the run that started measuring last, and rounding it to nearest steps below that (a column
    that run never measured); it is rounded up instead, the shared range's top down."""
    df = pd.DataFrame({"run_id": ["a", "a", "b", "b"], "c": [0.0140044, 0.0571234, 0.012, 0.0493317]})
    rungs = tables.ladder(df, "c")
    assert rungs[0] == 0.015 and rungs[-2] == 0.049 and rungs[-1] == 0.057  # the last: the largest cost reached
    assert all(float(f"{r:.2g}") == r for r in rungs)
    assert all(0.0140044 <= r <= 0.0493317 for r in rungs[:-1])


def test_sampling_steps_sweep_logs_fid_against_steps(store):
    client = store["client"]
    nfe = client.get_metric_history(store["ddpm"], "sample_nfe_vs_steps")
    assert [(m.step, m.value) for m in nfe] == [(2, 2.0), (4, 4.0)]
    assert [m.step for m in client.get_metric_history(store["ddpm"], "fid_vs_steps")] == [2, 4]
    assert "steps" in store["sweep"] and "FID" in store["sweep"]


@pytest.fixture
def cmp_table(store):
    import mlflow

    mlflow.set_tracking_uri(store["uri"])
    return collect(["cmp"], MlflowClient(tracking_uri=store["uri"]))


def test_tidy_table_has_a_row_per_eval_point_of_every_run(cmp_table):
    df = cmp_table
    assert sorted(df["model"].unique()) == ["dcgan", "ddpm", "wgan-gp"]
    assert len(df) == 12 and df.groupby("run_id").size().tolist() == [4, 4, 4]  # 4 eval points each
    for _, run in df.groupby("run_id"):
        assert run["images_seen"].is_monotonic_increasing and run["images_seen"].iloc[-1] == 128
        assert (run["device_hours"] > 0).all() and run["device_hours"].is_monotonic_increasing
    assert set(df["eval_samples"]) == {8} and set(df["real_samples"]) == {16}
    assert df["reference"].iloc[0].endswith(":train") and df["dataset_fingerprint"].nunique() == 1
    assert (df[df["model"] == "ddpm"]["sample_nfe"] == 4).all() and (df[df["model"] != "ddpm"]["sample_nfe"] == 1).all()
    assert {"lr_g", "lr", "beta1", "spec_hash", "pflops", "kid_std", "precision", "recall",
            "diversity"} <= set(df.columns)


def test_interpolation_in_log_cost_never_extrapolates(cmp_table):
    for _, run in cmp_table.groupby("run_id"):
        costs, fids = run["device_hours"].to_numpy(), run["fid"].to_numpy()
        for c, f in zip(costs, fids, strict=True):
            assert tables.interpolate(costs, fids, c) == pytest.approx(f)
        mid = math.sqrt(costs[1] * costs[2])  # halfway in log-cost: halfway in FID
        assert tables.interpolate(costs, fids, mid) == pytest.approx((fids[1] + fids[2]) / 2)
        assert math.isnan(tables.interpolate(costs, fids, costs[0] * 0.99))
        assert math.isnan(tables.interpolate(costs, fids, costs[-1] * 1.01))
        reached = tables.cost_to_reach(costs, fids, fids.min())
        assert reached == pytest.approx(costs[np.argmin(fids)], rel=1e-9)  # the minimum is reached at its point
        assert math.isnan(tables.cost_to_reach(costs, fids, fids.min() - 1))
    dcgan = cmp_table[cmp_table["model"] == "dcgan"]
    last = float(dcgan["device_hours"].iloc[-1])
    table = tables.quality_at_equal_cost(cmp_table, "device_hours", [last, last * 10])
    assert float(table.loc["dcgan"].iloc[0]) == pytest.approx(dcgan["fid"].iloc[-1], rel=1e-3)
    assert table.loc["dcgan"].iloc[1] == ""  # beyond its budget: empty, not extrapolated

    # The default ladder: where the runs' ranges overlap, every run has a number in every column but the last
    # (the largest cost any run reached); where they do not, the rungs span all measured costs.
    for axis in ("device_hours", "pflops"):
        spans = cmp_table.groupby("run_id")[axis].agg(["min", "max"])
        rungs, table = tables.ladder(cmp_table, axis), tables.quality_at_equal_cost(cmp_table, axis)
        assert len(rungs) == table.shape[1] >= 2 and rungs[-1] <= spans["max"].max()
        if spans["min"].max() <= spans["max"].min():
            assert spans["min"].max() <= rungs[0] and (table.iloc[:, :-1] != "").all().all(), (axis, rungs)
        else:
            assert rungs[0] >= spans["min"].min() and (table != "").sum().sum() >= len(spans)


def test_cost_to_reach_is_the_first_crossing_in_log_cost():
    costs, fids = [1.0, 2.0, 4.0, 8.0], [100.0, 80.0, 90.0, 60.0]
    assert tables.cost_to_reach(costs, fids, 100) == 1.0  # reached at the first point
    assert tables.cost_to_reach(costs, fids, 85) == pytest.approx(2**0.75)  # 3/4 of the way from 1 to 2 in log
    assert tables.cost_to_reach(costs, fids, 70) == pytest.approx(4 * 2 ** (2 / 3))  # after the bump
    for target in (85, 70, 61):
        assert tables.interpolate(costs, fids, tables.cost_to_reach(costs, fids, target)) == pytest.approx(target)
    assert math.isnan(tables.cost_to_reach(costs, fids, 59))


def test_scaling_fit_recovers_a_known_power_law():
    costs = np.geomspace(1e-3, 0.5, 8)
    fit = scaling.fit(costs, 50 * costs**-0.5 + 20)
    assert (fit.a_raw, fit.b, fit.e) == (pytest.approx(50, rel=1e-3), pytest.approx(0.5, abs=1e-6),
                                         pytest.approx(20, abs=0.05))
    truth = 50 * 10**-0.5 + 20
    assert fit.fid_at(10)[0] == pytest.approx(truth, rel=1e-3)  # 20x beyond the points, exact without noise
    assert fit.cost_for(30)[0] == pytest.approx((50 / 10) ** 2, rel=1e-3)
    covered = 0
    for seed in range(20):  # with noise, the bootstrap band covers the truth in most draws
        noisy = 50 * costs**-0.5 + 20 + np.random.default_rng(seed).normal(0, 2, len(costs))
        estimate, lo, hi = scaling.fit(costs, noisy).fid_at(10)
        covered += lo <= truth <= hi
        assert lo <= estimate <= hi
    assert covered >= 14, covered


def test_a_fit_on_the_flat_part_of_a_known_curve_says_so_and_projects_nothing():
    """FID = 50 c^-0.5 + 20 seen only where it has flattened (its fall smaller than the noise): the parameters
    are the fit's bounds', not the data's, and the scaling table prints no number from them. The same curve
    seen where it falls is determined."""
    from analysis.report import _scaling_table

    flat, steep = np.geomspace(1e4, 3.2e5, 6), np.geomspace(0.1, 3.2, 6)
    for seed in range(8):
        noise = np.random.default_rng(seed).normal(0, 0.3, 6)
        assert scaling.fit(flat, 50 * flat**-0.5 + 20 + noise).on_bounds, seed
        assert not scaling.fit(steep, 50 * steep**-0.5 + 20 + noise).on_bounds, seed
    noise = np.random.default_rng(0).normal(0, 0.3, 6)
    runs = pd.DataFrame({"model": "flat", "device_hours": flat, "fid": 50 * flat**-0.5 + 20 + noise,
                         "point": range(6)})
    row = _scaling_table(runs, "device_hours", 1e6, [21.0], "fid").loc["flat"]
    assert "on a bound" in row["fit"]
    assert all(v.startswith("not determined by the data") for k, v in row.items() if "extrapolated" in k), row


def test_seeds_at_one_eval_point_are_one_cost_point_however_their_costs_jitter():
    costs = np.array([1.0, 1.01, 2.0, 2.02, 4.0, 4.04])  # two seeds x three eval points
    fids = 50 * costs**-0.5 + 20
    assert scaling.fit(costs, fids) is not None  # six distinct costs by jitter alone
    assert scaling.fit(costs, fids, points=[0, 0, 1, 1, 2, 2]) is None  # three cost points: too few


def test_pareto_front_is_exactly_the_non_dominated_points(cmp_table):
    for axis in ("device_hours", "pflops", "sample_seconds_per_image"):
        front = tables.pareto_front(cmp_table, axis)
        assert front[axis].is_monotonic_increasing and front["fid"].is_monotonic_decreasing
        points = list(zip(cmp_table[axis], cmp_table["fid"], strict=True))
        on_front = set(zip(front[axis], front["fid"], strict=True))
        for x, y in points:
            dominated = any(a <= x and b <= y and (a, b) != (x, y) for a, b in points)
            assert ((x, y) in on_front) == (not dominated), (axis, x, y)


def test_scaling_fit_projects_within_the_points_and_says_never_beyond_the_floor(cmp_table):
    run = cmp_table[cmp_table["model"] == "dcgan"]
    fitted = scaling.fit(run["device_hours"], run["fid"])
    assert fitted is not None and fitted.points == 4
    estimate, lo, hi = fitted.fid_at(float(run["device_hours"].iloc[-1]))
    spread = run["fid"].max() - run["fid"].min()
    assert lo <= estimate <= hi and run["fid"].min() - spread <= estimate <= run["fid"].max() + spread
    assert fitted.cost_for(fitted.e - 1)[0] == math.inf  # below the fitted floor: never
    # a target a hair above the floor with a shallow exponent: a cost beyond any float, not an OverflowError
    shallow = scaling.Fit(a=1.0, b=0.005, e=400.0, points=4, samples=np.array([[1.0, 0.005, 400.0]]), scale=1e-3)
    assert shallow.cost_for(400.001) == (math.inf, math.inf, math.inf)


def test_metrics_made_differently_are_refused_or_grouped(store):
    df = collect(None, store["client"])
    assert df["eval_samples"].nunique() == 2
    with pytest.raises(UserError, match="not made the same way.*eval_samples.*inception_precision"):
        comparable(df)
    assert sorted(len(g) for g in comparable(df, group=True)) == [1, len(df) - 1]
    proc = store["bench"]("report", "--experiment", "smoke-ddpm", "--quiet", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "it has: cmp, curves" in proc.stderr
    proc = store["bench"]("report", "--out", "mixed", "--quiet", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not made the same way" in proc.stderr
    proc = store["bench"]("report", "--out", "grouped", "--group", "--quiet")
    page = (store["folder"] / "grouped" / "index.html").read_text()
    assert "Metric set 2" in page and 'id="fig-fid_vs_sampling_steps"' in page  # the sweep made after compare


def test_report_renders_in_chromium_with_every_table_and_figure(store):
    report = store["folder"] / "report"
    index = report / "index.html"
    page = index.read_text()
    figures = page.count("<img ")
    names = re.findall(r'<figure id="fig-([^"]+)"', page)
    captions = re.findall(r"<figcaption>([^<]+)</figcaption>", page)
    assert len(captions) == figures and all(len(c) > 40 and "_" not in c for c in captions)  # words, not files
    for expected in ("kid_vs_device_hours", "kid_vs_pflops", "kid_vs_sampling_cost", "fid_vs_device_hours",
                     "losses"):
        assert expected in names, expected
    assert sum(n.startswith("samples_") for n in names) == 3  # a sample progression strip per run
    for name in ("kid_x1000_at_equal_device_hours", "fid_at_equal_device_hours", "cost_to_reach_pflops",
                 "pareto_device_hours", "pareto_sampling", "scaling", "final"):
        assert (report / "tables" / f"{name}.md").is_file() and (report / "tables" / f"{name}.csv").is_file()

    dom = chromium("--virtual-time-budget=10000", "--dump-dom", index.as_uri()).stdout
    rendered = re.search(r'data-figures-rendered="(\d+)"', dom)
    assert rendered and int(rendered.group(1)) == figures >= 10, "every embedded figure decoded in the browser"
    assert dom.count("<table") >= 9 and "EXTRAPOLATION" in dom
    assert "KID x 1000 at equal cost" in dom and "FID at equal cost (device-hours) (biased upwards at N = 8" in dom
    shot = report / "screenshot.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,4000", index.as_uri())
    assert shot.is_file() and shot.stat().st_size > 20_000

    client = store["client"]
    (logged,) = client.search_runs([client.get_experiment_by_name("reports").experiment_id],
                                   "tags.`report.experiments` = 'cmp'")
    assert "index.html" in {a.path for a in client.list_artifacts(logged.info.run_id)}


def test_bench_ui_answers_before_it_says_open_and_shows_names_datasets_and_grids(store, tmp_path):
    """`bench ui` prints its address only once the server answers; the runs table shows readable names and the
    dataset, sorts and filters on the metrics; a run's sample grids step through its eval points."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "ui", "--port", str(port), "--tracking-uri",
                               store["uri"], "--experiment", "cmp"], cwd=store["folder"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        line = server.stdout.readline()  # blocks until bench ui prints
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200  # already up
        base = f"http://127.0.0.1:{port}/#/experiments/{store['experiment_id']}/runs"
        assert line.strip() == f"open {base}?workflowType=machine_learning&viewStateShareKey=facebench"

        def page(url: str) -> str:
            return chromium("--window-size=2400,1400", "--virtual-time-budget=30000", "--dump-dom", url).stdout

        def listed(query: str = "") -> list[str]:
            return re.findall(r"(dcgan|wgan-gp|ddpm)-128img-s0", re.sub(r"<[^>]+>", " ", page(base + query)))

        dom = page(line.split()[1])
        names = set(re.findall(r"(?:dcgan|wgan-gp|ddpm)-128img-s0", dom))
        assert names == {"dcgan-128img-s0", "wgan-gp-128img-s0", "ddpm-128img-s0"}
        # the address opens on the answer: the leading metric (KID at N = 8) as a column, every run's value,
        # sorted best first, beside images seen and device-hours
        kid = column(dom, "metrics.`kid_mean`")
        final = {r.info.run_id: r.data.metrics["kid_mean"]
                 for r in store["client"].search_runs([store["experiment_id"]])}
        assert set(kid) == set(final)
        for run_id, (_, shown) in kid.items():
            assert float(shown) == pytest.approx(final[run_id], rel=0.01, abs=1e-3)
        assert [r for r, _ in sorted(kid.items(), key=lambda item: item[1][0])] == sorted(final, key=final.get)
        assert set(column(dom, "metrics.`images_seen`")) == set(final) == set(column(dom, "metrics.`device_hours`"))
        headers = re.findall(r'role="columnheader"[^>]*aria-colindex="(\d+)"[^>]*col-id="((?:params|metrics)\.[^"]+|'
                             r'attributes\.`Dataset`)"', dom)
        assert [key for _, key in sorted(headers, key=lambda h: int(h[0]))] == view("kid_mean")["selectedColumns"]
        # its chart view opens on quality, then the grids (captioned by nothing but the runs, not 20 params),
        # then cost; MLflow's own sections (the losses, system metrics) after them
        for _ in range(3):  # the charts render lazily; a loaded machine can need a second look
            text = " ".join(re.sub(r"<[^>]+>", " ", page(line.split()[1] + "&compareRunsMode=CHART")).split())
            if "Samples (1)" in text and "-128img-s0" in text.split("Samples (1)")[1]:
                break
        sections = re.findall(r"(Quality|Samples|Cost|Model metrics|System metrics) \((\d+)\)", text)
        assert [name for name, _ in sections][:3] == ["Quality", "Samples", "Cost"] and \
            "Model metrics" in dict(sections), sections
        quality, samples = text.split("Quality (")[1].split("Samples (1)")
        assert quality.index("kid_mean") < quality.index("fid") < quality.index("recall"), quality[:500]
        grids = samples.split("Cost (")[0]
        assert "samples/grid" in grids and "-128img-s0" in grids and "batch_size=" not in grids, grids[:800]
        fingerprint = store["client"].search_runs([store["experiment_id"]])[0].data.tags["dataset_fingerprint"]
        assert f"celeba ({fingerprint})" in dom  # the Dataset column: name (digest)
        runs = store["client"].search_runs([store["experiment_id"]], order_by=["metrics.fid ASC"])
        by_fid = [r.info.run_name.removesuffix("-128img-s0") for r in runs]
        # every run listed, in the order of their FIDs: the UI shows and sorts on the metric
        assert listed("?orderByKey=metrics.%60fid%60&orderByAsc=true") == by_fid
        worst = max(r.data.metrics["fid"] for r in runs)
        assert listed(f"?searchFilter=metrics.fid%20%3E%20{worst + 1:.0f}") == []  # and filters on them

        # one run's grids: the chart view of that run alone has a samples section whose slider steps through
        # its four eval points, showing the first grid
        ddpm = next(r for r in runs if r.data.params["model"] == "ddpm")
        url = (f"{base}?workflowType=machine_learning&compareRunsMode=CHART&searchFilter=attributes.run_name"
               f"%3D%27{ddpm.info.run_name}%27")
        for _ in range(3):  # the charts render lazily; a loaded machine can need a second look
            dom = chromium("--window-size=2400,1400", "--virtual-time-budget=60000", "--dump-dom", url).stdout
            if 'title="samples/grid"' in dom and "rc-image-img" in dom:
                break
        card = dom[dom.index('title="samples/grid"'):][:20_000]
        assert 'aria-valuemin="0"' in card and 'aria-valuemax="3"' in card  # steps 0..3: four grids
        (src,) = re.findall(r'<img class="rc-image-img" src="([^"]+)"', card)
        assert "samples~grid%2Bstep%2B0%2B" in src.replace("%7E", "~") and ddpm.info.run_id in src
        artifact = urllib.request.urlopen(f"http://127.0.0.1:{port}/{src.replace('&amp;', '&')}", timeout=10)
        assert artifact.status == 200 and len(artifact.read()) > 100
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def column(dom: str, key: str) -> dict[str, tuple[int, str]]:
    """One column of MLflow's runs table as rendered: run id -> (row on screen, text shown)."""
    out = {}
    for chunk in re.split(r'(?=<div[^>]*role="row")', dom):
        row = re.search(r'row-index="(\d+)" row-id="([0-9a-f]{32})"', chunk[:800])
        at = chunk.find(f'col-id="{key}"')
        if row and at >= 0:
            text = chunk[chunk.index(">", at) + 1 :].split("col-id=")[0].rsplit("<div", 1)[0]
            out[row.group(2)] = (int(row.group(1)), " ".join(re.sub(r"<[^>]+>", " ", text).split()))
    return out


def test_a_runs_address_opens_the_model_training_layout_with_its_description(store):
    """The run page the tool links to is MLflow's model-training one (runs, models, registry), not the GenAI
    one a plain address opens, and shows the description the run wrote."""
    from benchmark.runs_view import run_url

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "ui", "--port", str(port), "--tracking-uri",
                               store["uri"]], cwd=store["folder"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        server.stdout.readline()
        run = store["client"].get_run(store["ddpm"])
        url = run_url(f"http://127.0.0.1:{port}", run.info.experiment_id, run.info.run_id)
        for _ in range(3):
            text = " ".join(re.sub(r"<[^>]+>", " ", chromium("--window-size=1600,1200", "--virtual-time-budget=30000",
                                                             "--dump-dom", url).stdout).split())
            if "Description" in text:
                break
        assert "Model registry" in text and "Evaluations" not in text  # the model-training layout
        described = run.data.tags["mlflow.note.content"].split("\n")[0]
        assert described.startswith("ddpm on celeba") and described in text
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_bench_ui_says_in_one_line_when_the_server_cannot_start(store):
    with socket.socket() as busy:  # the port is taken: MLflow exits, bench ui says why
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = store["bench"]("ui", "--port", str(port), "--timeout", "60", check=False)
    assert proc.returncode == 2 and proc.stderr.count("error:") == 1 and "exited" in proc.stderr
    assert "Traceback" not in proc.stderr and "open http" not in proc.stdout


def test_a_spec_files_runs_are_filed_and_reported_under_its_name(celeba, tmp_path):
    from conftest import bench

    spec = tmp_path / "tiny-dcgan.toml"
    spec.write_text('model = "dcgan"\nbudget = "32img"\nngf = 8\nndf = 8\nbatch_size = 16\n\n[eval]\n'
                    'samples = 6\nreal_samples = 16\npoints = 1\ngrid = 4\n')
    bench("run", "--spec", str(spec), "--data", str(celeba), "--quiet")
    assert [e.name for e in MlflowClient().search_experiments() if e.name != "Default"] == ["tiny-dcgan"]
    (tmp_path / "report").mkdir()  # a committed report folder: nothing writes into it unless told to
    proc = bench("report", "--experiment", str(spec), "--quiet")  # the file's path ...
    assert proc.stdout.strip() == f"report: {os.path.join('reports', 'tiny-dcgan', 'index.html')}"
    from benchmark.tracking import find_experiments

    for name in ("tiny-dcgan", "tiny-dcgan.toml", str(spec)):  # ... its name, with or without .toml
        assert [e.name for e in find_experiments([name])] == ["tiny-dcgan"]
    assert (tmp_path / "reports" / "tiny-dcgan" / "index.html").is_file() and not any((tmp_path / "report").iterdir())
    proc = bench("report", "--experiment", "smoke-ddpm.toml", check=False)
    assert proc.returncode == 2 and "no MLflow experiment named smoke-ddpm" in proc.stderr
    assert "it has: tiny-dcgan" in proc.stderr and proc.stderr.count("\n") == 1


def test_compare_of_two_spec_files_of_one_family_names_curves_by_file(store, celeba, tmp_path):
    """Two dcgan settings in one compare (the seed's and a tuned one): each spec file's stem names its runs and
    its curve, and `--seeds 1,MODEL=2` gives one of them a second seed."""
    for name, lr in (("seed-like", "1e-4"), ("tuned", "2e-4")):
        (tmp_path / f"{name}.toml").write_text(f'model = "dcgan"\nlr_g = {lr}\nngf = 8\nndf = 8\n')
    files = [str(tmp_path / "seed-like.toml"), str(tmp_path / "tuned.toml")]
    store["bench"]("compare", "--models", ",".join(files), "--budget", "32img", "--data", str(celeba),
                   "--seeds", "1,seed-like=2", "--experiment-name", "files", "--out", "files-report", *TINY[:10])
    df = collect(["files"], store["client"])
    runs = df.drop_duplicates("run_id")
    assert sorted(runs["run_name"]) == ["seed-like-32img-s0", "seed-like-32img-s1", "tuned-32img-s0"]
    assert sorted(df["model"].unique()) == ["seed-like", "tuned"] and set(df["family"]) == {"dcgan"}
    table = tables.quality_at_equal_cost(df, "images_seen", metric="kid_x1000")
    assert any("(n=2 seeds)" in cell for cell in table.loc["seed-like"])
    tags = store["client"].get_run(runs["run_id"].iloc[0]).data.tags
    assert tags["spec_file"].endswith(".toml") and tags["compare"] == "files"
    # the same command again, one seed more: the finished runs are kept, only the new one trains
    again = store["bench"]("compare", "--models", ",".join(files), "--budget", "32img", "--data", str(celeba),
                           "--seeds", "2", "--experiment-name", "files", "--out", "files-report", *TINY[:10])
    assert "kept 3 finished run(s) of files" in again.stderr, again.stderr[-2000:]
    exp_id = store["client"].get_experiment_by_name("files").experiment_id
    names = [r.info.run_name for r in store["client"].search_runs([exp_id])]
    assert sorted(names) == ["seed-like-32img-s0", "seed-like-32img-s1", "tuned-32img-s0", "tuned-32img-s1"]
