"""`bench run` end to end on real faces: MLflow params, tags, step metrics, grids, metrics, caches; then
`bench eval` and `bench sample` on its checkpoint."""

import logging

from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import TINY, bench_inprocess

METRICS = ["--set", "eval.samples=16", "--set", "eval.real_samples=32", "--set", "eval.points=2"]


def test_dcgan_run_on_celeba_logs_everything_and_reuses_caches(celeba, capsys, caplog, tmp_path, monkeypatch):
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")  # a short run still gets samples
    args = ["run", "--model", "dcgan", "--data", str(celeba), "--budget", "64img", *TINY, *METRICS,
            "--set", "log_every=1"]
    code, _, err = bench_inprocess(*args, capsys=capsys)
    assert code == 0, err
    client = MlflowClient()
    (exp,) = [e for e in client.search_experiments() if e.name == "dcgan"]
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["lr_g"] == "0.0001" and run.data.params["beta2"] == "0.9999"
    assert run.data.params["eval.samples"] == "16"
    tags = run.data.tags
    assert tags["dataset"] == "celeba" and len(tags["dataset_fingerprint"]) == 16 and tags["budget"] == "64img"
    assert {"git_commit", "device", "torch_version", "precision", "metrics.weights_sha256"} <= set(tags)
    assert tags["metrics.is"].startswith("unavailable")
    fid = client.get_metric_history(run.info.run_id, "fid")
    assert [m.step for m in fid] == [32, 64]  # every eval point (1/2 of the budget) and the end
    assert len(client.get_metric_history(run.info.run_id, "loss_d")) == 4  # every step at batch 16
    # 64 of 4591 training images: less than an epoch, whose mean still reaches the seed's per-epoch plot
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss_d_epoch")] == [1]
    for key in ("kid_mean", "recall", "diversity", "device_hours", "pflops", "epochs", "sample_seconds_per_image"):
        assert client.get_metric_history(run.info.run_id, key), key
    # the same samples scored against CelebA's valid partition, which training never saw, beside the train one
    assert tags["metrics.heldout_reference"] == "celeba:valid" and tags["metrics.heldout_samples"] == "32"
    for key in ("kid_mean_heldout", "fid_heldout", "recall_heldout"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [32, 64], key
    assert run.data.metrics["fid_heldout"] != run.data.metrics["fid"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"spec.toml", "samples", "plots", "checkpoints"} <= artifacts
    # finished: one checkpoint (the fallback only serves a resume, which a finished run never has) and no lock
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")} == {"checkpoints/last.pt"}
    grids = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert grids == {"samples/grid_0000000032.png", "samples/grid_0000000064.png"}
    assert "computing real statistics" in caplog.text
    assert "eval at 64 images" in caplog.text and ", diversity " in caplog.text  # fidelity and spread in its line
    assert "run `bench ui` to open its runs table" in caplog.text  # no address while no UI answers on it
    # what the MLflow UI shows: the data as a dataset input, grids as images stepping through the eval points,
    # a description with the result and how it was made, system metrics
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "celeba" and dataset.dataset.digest == tags["dataset_fingerprint"]
    assert '"num_images": 4591' in dataset.dataset.profile and {t.key: t.value for t in dataset.tags} == {
        "mlflow.data.context": "train", "split": "train"}
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in images) == [0, 1]  # eval points 0 and 1
    assert all("/samples~grid+" in p for p in images)
    note = tags["mlflow.note.content"]
    assert note.startswith("dcgan on celeba (train, 4,591 images at 64x64), budget 64img, seed 0.")
    assert "Result: KID x 1000 = " in note and "after 64 images" in note and "16 generated vs 32 real" in note
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), sorted(run.data.metrics)

    caplog.clear()
    code, _, err = bench_inprocess(*args, "--experiment-name", "again", capsys=capsys)
    assert code == 0, err
    assert "reusing prepared data" in caplog.text and "no decoding" in caplog.text
    assert "reusing cached real statistics" in caplog.text

    code, out, err = bench_inprocess("eval", run.info.run_id, "--samples", "16", capsys=capsys)
    assert code == 0, err
    assert "fid" in out and "kid_mean" in out and "leads" in out and "kid_mean" in out.split("leads")[1]
    assert len(client.get_metric_history(run.info.run_id, "fid")) == 3  # same N: the run's own curve
    # another N or other BatchNorm statistics never enter the run's curve: keys of their own
    for args, key in ((["--samples", "8"], "fid_n8"), (["--bn", "running"], "fid_bn-running")):
        code, out, err = bench_inprocess("eval", run.info.run_id, *args, capsys=capsys)
        assert code == 0 and key in out, err
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [64]
    assert len(client.get_metric_history(run.info.run_id, "fid")) == 3
    tags = client.get_run(run.info.run_id).data.tags
    assert tags["metrics.eval_samples"] == "16" and tags["metrics.bn"] == "standing"
    assert tags["metrics_n8.eval_samples"] == "8" and tags["metrics_bn-running.bn"] == "running"
    from analysis.collect import collect

    assert set(collect(["dcgan"])["eval_samples"]) == {16}

    code, _, err = bench_inprocess("eval", run.info.run_id, "--sampler-steps", "10", capsys=capsys)
    assert code != 0 and "one network pass" in err and "Traceback" not in err

    # `bench sample`: a grid, or a folder of PNGs that `bench eval --fake` reads; the seed fixes the images
    folder = tmp_path / "drawn"
    for out in (folder, tmp_path / "grid.png", tmp_path / "again"):
        code, out_text, err = bench_inprocess("sample", run.info.run_id, "--n", "5", "--out", str(out), capsys=capsys)
        assert code == 0 and "5 images from dcgan at 64 images seen" in out_text, err
        assert "BatchNorm standing" in out_text and out_text.count("images from") == 1
    drawn = sorted(folder.glob("*.png"))
    assert len(drawn) == 5 and Image.open(drawn[0]).size == (64, 64)
    assert [p.read_bytes() for p in drawn] == [p.read_bytes() for p in sorted((tmp_path / "again").glob("*.png"))]
    assert Image.open(tmp_path / "grid.png").size == (3 * 66 + 2, 2 * 66 + 2)  # 3 columns, 2 rows, 2 px padding
    code, _, err = bench_inprocess("sample", run.info.run_id, "--steps", "10", capsys=capsys)
    assert code != 0 and "one network pass" in err and "Traceback" not in err


def test_on_a_narrow_terminal_the_bar_keeps_its_width_and_its_figures_go_under_it():
    """Through a real pseudo-terminal 100 columns wide: the training bar fills the width and the clock, speed
    and losses have a line of their own; 250 columns: one line."""
    import fcntl
    import os
    import pty
    import re
    import struct
    import sys
    import termios

    def frames(columns: int) -> list[str]:
        pid, fd = pty.fork()
        if pid == 0:  # the child: bench on the terminal
            env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}  # the terminal's own size
            os.execve(sys.executable, [sys.executable, "-m", "benchmark.cli", "run", "--model", "dcgan", "--budget",
                                       "4s", *TINY[:-1], "--set", "eval.points=1"], env)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
        out = b""
        try:
            while chunk := os.read(fd, 4096):
                out += chunk
        except OSError:  # the child closed the terminal
            pass
        assert os.waitpid(pid, 0)[1] == 0
        return [f for f in re.split(r"[\r\n]|\x1b\[A", out.decode(errors="replace")) if f.strip()]

    narrow = frames(100)
    bars = [f for f in narrow if f.startswith("dcgan 4s:")]
    assert bars and all(len(f) == 99 and f.endswith("|") for f in bars), bars[-1:]  # the whole width, no figures
    assert any(f.startswith("  train ") and "img/s" in f and "loss_d=" in f for f in narrow)
    wide = frames(250)
    assert any(f.startswith("dcgan 4s:") and "img/s" in f and "loss_d=" in f for f in wide)
    assert not any(f.startswith("  train ") for f in wide)
