"""`bench sample --nearest`: each generated image beside its nearest training images in Inception space, in a
grid and in the run, with the distance beside the training set's own nearest-other distance."""

import shutil

import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from benchmark.nearest import nearest, train_to_train
from conftest import bench_inprocess

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
    faces = tmp_path / "faces64"  # an image folder is a data set of its own: all of it is the training split
    faces.mkdir()
    for path in sorted((celeba / "img_align_celeba" / "img_align_celeba").glob("*.jpg"))[:64]:
        shutil.copy(path, faces / path.name)
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


def test_nearest_wants_one_grid_file(capsys):
    code, _, err = bench_inprocess("sample", "0" * 32, "--nearest", "2", "--out", "folder", capsys=capsys)
    assert code != 0 and "--nearest draws one grid: give --out a .png or .jpg path" in err, err
