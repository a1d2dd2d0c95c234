"""`bench sample --nearest`: each generated image beside its nearest training images in Inception space, in a
grid and in the run, with the distance beside the training set's own nearest-other distance."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from benchmark import checkpoint
from benchmark.nearest import nearest, train_to_train
from conftest import bench_inprocess, face_folder, store_client

SMALL = ["--model", "dcgan", "--set", "ngf=16", "--set", "ndf=16", "--set", "batch_size=16", "--set",
         "eval.samples=0", "--set", "eval.grid=16", "--seed", "1", "--quiet"]


def test_the_search_finds_each_training_image_itself_first_and_never_itself_for_the_scale():
    train = torch.randn(50, 2048)
    dist, index = nearest(train[[5, 17, 42]] + 1e-4, train, k=3)
    assert index[:, 0].tolist() == [5, 17, 42] and dist[:, 0].max() < 0.01
    assert (dist[:, 1:] > 10).all() and (dist.diff(dim=1) >= 0).all()  # the others, nearest first
    scale = train_to_train(train)
    assert len(scale) == 50 and (scale > 10).all()  # never itself (0)


def test_nearest_puts_each_sample_beside_its_nearest_training_faces_in_the_grid_and_the_run(celeba, tmp_path,
                                                                                             capsys):
    faces = face_folder(celeba, tmp_path / "faces64", 64)  # a folder is a data set: all of it is the training split
    code, _, err = bench_inprocess("run", *SMALL, "--data", str(faces), "--budget", "1ep", "--experiment-name",
                                   "nearest", capsys=capsys)
    assert code == 0, err
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("nearest").experiment_id])
    out = tmp_path / "nearest.png"
    code, text, err = bench_inprocess("sample", run.info.run_id, "--nearest", "3", "--n", "16", "--out", str(out),
                                      "--quiet", capsys=capsys)
    assert code == 0, err
    assert "16 images from dcgan at 64 images seen, each beside its 3 nearest of 64 training images" in text, text
    with Image.open(out) as grid:  # a row per sample: it, then its 3 nearest
        assert grid.size == (4 * 66 + 2, 16 * 66 + 2)
    run = client.get_run(run.info.run_id)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "nearest_train_distance")] == [64]
    logged = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert any(p.startswith("images/nearest~grid+step+64+") for p in logged), logged
    # a 1-epoch DCGAN copies nothing: its images lie farther from the faces than the faces from each other
    nearest_, scale = run.data.metrics["nearest_train_distance"], run.data.metrics["train_nearest_other_distance"]
    assert nearest_ > scale > 0 and "(0 of 16 images nearer than that)" in text, text


# A DDPM that copies 4 faces within a minute on 2 CPU cores: 32x32, a narrow UNet, v-prediction on the cosine
# schedule (eps on the linear one still gave colour-cast noise after 800 steps), a short EMA.
MEMORISER = ["--model", "ddpm", "--set", "resolution=32", "--set", "ch=32", "--set", "ch_mult=[1, 2, 2]", "--set",
             "num_res_blocks=1", "--set", "attn_resolutions=[]", "--set", "dropout=0.0", "--set", "prediction=v",
             "--set", "schedule=cosine", "--set", "lr=1e-3", "--set", "ema_decay=0.99", "--set", "batch_size=16",
             "--set", "sampler_steps=20", "--set", "eval.samples=0", "--set", "eval.points=1", "--set",
             "checkpoint_minutes=0.05", "--budget", "400step", "--seed", "0", "--quiet"]


def test_the_nearest_distance_falls_as_a_run_memorises_its_training_faces(celeba, tmp_path, capsys):
    # One run on 4 faces, looked at twice as a user would: stopped by SIGTERM at its first checkpoint (a few
    # steps: noise, far from every face), then resumed to its 400 steps (100 epochs a batch: copies of the faces).
    faces = face_folder(celeba, tmp_path / "faces4", 4)
    client = store_client()
    job = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "run", *MEMORISER, "--data", str(faces),
                            "--experiment-name", "memorise"], stderr=subprocess.PIPE, text=True)
    deadline, run = time.time() + 120, None
    while time.time() < deadline and job.poll() is None:
        found = client.get_experiment_by_name("memorise")
        runs = client.search_runs([found.experiment_id]) if found else []
        if runs and (Path(runs[0].info.artifact_uri.replace("file://", "")) / checkpoint.LAST).is_file():
            run = runs[0]
            job.send_signal(signal.SIGTERM)
            break
        time.sleep(0.2)
    err = job.communicate(timeout=120)[1]
    assert run is not None and client.get_run(run.info.run_id).info.status == "KILLED", err

    def look(name: str) -> tuple[int, float, float, int]:
        code, text, err = bench_inprocess("sample", run.info.run_id, "--nearest", "2", "--n", "16", "--out",
                                          str(tmp_path / name), "--quiet", capsys=capsys)
        assert code == 0, err
        found = re.search(r"at (\d+) images seen.*mean ([\d.]+), training images to their nearest other: median "
                          r"([\d.]+) \((\d+) of 16", text)
        assert found, text
        return int(found[1]), float(found[2]), float(found[3]), int(found[4])

    early = look("early.png")
    code, _, err = bench_inprocess("run", "--resume", run.info.run_id, "--quiet", capsys=capsys)
    assert code == 0, err
    late = look("late.png")
    assert early[0] < 400 * 16 // 4 and late[0] == 400 * 16, (early, late)
    assert early[2] == late[2] > 0  # the training faces' own scale does not move
    assert early[3] == 0 and late[3] >= 1, (early, late)  # copies appear: nearer to a face than faces are to each other
    assert late[1] < early[1] - 2, (early, late)
    history = client.get_metric_history(run.info.run_id, "nearest_train_distance")
    assert [m.step for m in history] == [early[0], late[0]]  # the run keeps both looks, at their images seen
    assert [m.value for m in history] == pytest.approx([early[1], late[1]], abs=0.005)  # printed to 2 decimals


def test_nearest_wants_one_grid_file(capsys):
    code, _, err = bench_inprocess("sample", "0" * 32, "--nearest", "2", "--out", "folder", capsys=capsys)
    assert code != 0 and "--nearest draws one grid: give --out a .png or .jpg path" in err, err
