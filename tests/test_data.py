import logging
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from benchmark import synthetic
from benchmark.data import prepare
from benchmark.errors import UserError
from conftest import celeba_jpegs


def test_synthetic_faces_are_deterministic_and_varied():
    a, b = synthetic.draw_face(3), synthetic.draw_face(3)
    assert a.dtype == np.uint8 and a.shape == (3, 64, 64) and np.array_equal(a, b)
    faces = np.stack([synthetic.draw_face(i) for i in range(8)])
    assert faces.reshape(8, -1).std(axis=0).mean() > 20  # faces differ from each other
    prepared = prepare("synthetic", synthetic_images=40, progress=False)
    assert len(prepared) == 40 and np.array_equal(prepared.images[3], a)
    assert prepare("synthetic", synthetic_images=40, progress=False).from_cache


def test_celeba_kaggle_layout_split_and_cache(celeba, caplog):
    caplog.set_level(logging.INFO)
    valid = prepare(str(celeba), "valid", progress=False)
    assert len(valid) == 780 and valid.images.shape[1:] == (3, 64, 64) and valid.name == "celeba"
    caplog.clear()
    again = prepare(str(celeba), "valid", progress=False)
    assert again.from_cache and again.fingerprint == valid.fingerprint
    assert "no decoding" in caplog.text


def test_torchvision_layout_and_zip(celeba, tmp_path):
    files = celeba_jpegs(celeba, 12)
    root = tmp_path / "tv" / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    lines = []
    for i, f in enumerate(files):
        shutil.copy(f, root / "img_align_celeba" / f.name)
        lines.append(f"{f.name} {0 if i < 8 else 2}")
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    assert len(prepare(str(tmp_path / "tv"), "train", progress=False)) == 8
    assert len(prepare(str(tmp_path / "tv"), "test", progress=False)) == 4
    archive = tmp_path / "celeba.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in files:
            z.write(f, f"img_align_celeba/img_align_celeba/{f.name}")
        z.writestr("list_eval_partition.csv", "image_id,partition\n" + "\n".join(
            f"{f.name},{0 if i < 8 else 1}" for i, f in enumerate(files)))
    from_zip = prepare(str(archive), "valid", progress=False)
    from_dir = prepare(str(tmp_path / "tv"), "test", progress=False)
    assert len(from_zip) == 4 and np.array_equal(np.asarray(from_zip.images), np.asarray(from_dir.images))


def test_image_folder_with_corrupt_grayscale_and_rgba(celeba, tmp_path, caplog):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for f in celeba_jpegs(celeba, 5):
        shutil.copy(f, folder / "sub" / f.name)
    Image.new("L", (80, 60), 128).save(folder / "gray.png")
    Image.new("RGBA", (64, 64), (10, 20, 30, 0)).save(folder / "rgba.webp")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    (folder / "notes.txt").write_text("ignored")
    caplog.set_level(logging.INFO)
    prepared = prepare(str(folder), progress=False)
    assert len(prepared) == 7 and prepared.skipped == 1
    assert "broken.jpg" in caplog.text
    gray = np.asarray(prepared.images[0])  # gray.png sorts first
    assert gray.shape == (3, 64, 64) and np.all(gray == 128)


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "not found"),
    (lambda p: p.mkdir(), "no images found"),
    (lambda p: (p.mkdir(), (p / "a.txt").write_text("x")), "no images found"),
    (lambda p: (p.mkdir(), (p / "a.jpg").write_bytes(b"garbage")), "no readable image"),
])
def test_unusable_sources_are_user_errors(tmp_path, make, message):
    path = tmp_path / "data"
    make(path)
    with pytest.raises(UserError, match=message):
        prepare(str(path), progress=False)
