"""`bench run --model diffusion` as the user types it, and reusing its autoencoder (the sweep: test_analysis)."""

import logging

from mlflow.tracking import MlflowClient

from conftest import ROOT, bench_inprocess

# Narrower nets than the seed's so that the test takes seconds; everything else is the seed's file.
NARROW = ["--set", "ae_ch=8", "--set", "ch=16", "--set", "eval.samples=8", "--set", "eval.real_samples=16",
          "--set", "eval.points=1", "--set", "sampler_steps=4", "--quiet"]


def test_model_diffusion_is_the_seed_ldm_then_reuse(celeba, capsys, caplog):
    caplog.set_level(logging.INFO)
    code, _, err = bench_inprocess("run", "--model", "diffusion", "--budget", "40img", "--data", str(celeba), *NARROW,
                                   capsys=capsys)
    assert code == 0, err
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("ldm").experiment_id])
    params, metrics = run.data.params, run.data.metrics
    assert params["model"] == "ldm" and run.data.tags["model_alias"] == "diffusion"
    assert params["batch_size"] == "5" and params["lr"] == "0.0003" and params["prediction"] == "eps"
    assert params["eval.grid"] == "4"  # the seed's 4 samples per evaluation
    assert metrics["autoencoder_images"] == 10 and metrics["diffusion_images"] == 30  # ae_fraction 0.25 of 40
    assert metrics["autoencoder_device_hours"] > 0 and metrics["diffusion_device_hours"] > 0
    assert "recon_fid" in metrics and "fid" in metrics
    assert "encoding 4591 images into latents" in caplog.text

    caplog.clear()  # stage 1 from that run: same autoencoder weights, so the cached latents are reused
    code, _, err = bench_inprocess("run", "--model", "ldm", "--spec", "seed-ldm", "--budget", "20img",
                                   "--data", str(celeba), *NARROW, "--set", f"autoencoder_run={run.info.run_id}",
                                   capsys=capsys)
    assert code != 0 and "spec file not found" in err  # a name is not a path: one clear line
    code, _, err = bench_inprocess("run", "--model", "ldm", "--budget", "20img", "--data", str(celeba), *NARROW,
                                   "--set", f"autoencoder_run={run.info.run_id}", "--set", "batch_size=5",
                                   "--experiment-name", "reuse", capsys=capsys)
    assert code == 0, err
    (reuse,) = client.search_runs([client.get_experiment_by_name("reuse").experiment_id])
    assert "reusing cached latents" in caplog.text
    # the reused autoencoder's recorded cost is charged in the same columns, with a tag naming its run
    assert reuse.data.tags["autoencoder_reused"] == run.info.run_id and reuse.data.metrics["diffusion_images"] == 20
    for key in ("autoencoder_images", "autoencoder_pflops", "autoencoder_device_hours"):
        assert reuse.data.metrics[key] == metrics[key], key

    # the same run again: its latents come from the cache, and it costs what the first one did
    code, _, err = bench_inprocess("run", "--model", "diffusion", "--budget", "40img", "--data", str(celeba), *NARROW,
                                   "--experiment-name", "again", capsys=capsys)
    assert code == 0, err
    (again,) = client.search_runs([client.get_experiment_by_name("again").experiment_id])
    assert again.data.metrics["pflops"] == metrics["pflops"]
    assert again.data.metrics["diffusion_device_hours"] > 0.5 * metrics["diffusion_device_hours"]

    code, _, err = bench_inprocess("eval", run.info.run_id, "--sampler-steps", "ten", capsys=capsys)
    assert code != 0 and "positive integers" in err and "Traceback" not in err
    code, _, err = bench_inprocess("run", "--model", "diffusion", "--spec",
                                   str(ROOT / "experiments" / "smoke-ldm.toml"), capsys=capsys)
    assert code != 0 and "already means seed-ldm.toml" in err
