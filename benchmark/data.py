"""Data sources and the preparation cache: decode once, train from a memory-mapped uint8 array.

Sources: CelebA in the Kaggle layout (img_align_celeba/img_align_celeba + list_eval_partition.csv) or
torchvision's (celeba/img_align_celeba + list_eval_partition.txt), either as a folder or a .zip; any
folder of images (one split); and "synthetic", procedural faces. Preparation (center square crop,
antialiased PIL resize) runs once per (source, split, resolution) and is named by a fingerprint of
the file list, the file contents and the preprocessing.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from benchmark import cores, synthetic
from benchmark.atomic import atomic_write, write_text
from benchmark.errors import UserError
from benchmark.filelock import file_lock

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SPLITS = {"train": 0, "valid": 1, "test": 2}
PREPROCESSING = "center-square-crop+PIL-lanczos-resize"
_CHUNK = 256


def cache_root() -> Path:
    """Where prepared arrays, real statistics and converted weights live ($BENCH_CACHE); a cache that cannot be
    written is one line, not a traceback from whatever writes first."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "facebench"
    path = Path(os.environ.get("BENCH_CACHE", default))
    _check_writable(str(path))
    return path


@functools.cache
def _check_writable(path: str) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UserError(f"the cache {path} cannot be written ({err.strerror}); set BENCH_CACHE to a writable "
                        "folder") from None


@dataclass
class Prepared:
    """A prepared data set: uint8 images (N, 3, R, R), memory-mapped, and how they were made."""

    images: np.ndarray
    name: str
    fingerprint: str
    source: str
    split: str
    resolution: int
    skipped: int
    from_cache: bool
    smaller: int = 0  # source images whose short side was below the resolution: upscaled, not downscaled
    smallest: int = 0  # the shortest such side

    def __len__(self) -> int:
        return len(self.images)

    def info(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "split": self.split,
            "resolution": self.resolution,
            "images": len(self),
            "skipped": self.skipped,
            "fingerprint": self.fingerprint,
            "preprocessing": PREPROCESSING,
        }


# ---------------------------------------------------------------- finding the files of a source


@dataclass
class _Listing:
    kind: str  # celeba-kaggle | celeba-torchvision | folder | zip variants
    names: list[str]  # relative names (or zip members), sorted
    read: Callable[[str], bytes]
    stamp: str  # cheap identity of the source's state, for the cache key
    unreadable: list[str] = field(default_factory=list)  # entries that could not be listed: skipped, named


def _read_partition(text: str, split: str) -> set[str]:
    wanted = None if split == "all" else SPLITS[split]
    keep = set()
    for line in text.splitlines()[0:]:
        parts = line.replace(",", " ").split()
        if len(parts) != 2 or not parts[1].isdigit():
            continue  # header line
        if wanted is None or int(parts[1]) == wanted:
            keep.add(parts[0])
    return keep


def _folder_listing(root: Path, split: str) -> _Listing:
    kaggle = root / "img_align_celeba" / "img_align_celeba"
    tv_root = root if (root / "list_eval_partition.txt").exists() else root / "celeba"
    for kind, img_dir, partition in (
        ("celeba-kaggle", kaggle, root / "list_eval_partition.csv"),
        ("celeba-torchvision", tv_root / "img_align_celeba", tv_root / "list_eval_partition.txt"),
    ):
        if img_dir.is_dir() and partition.is_file():
            keep = _read_partition(partition.read_text(), split)
            entries = sorted((e for e in os.scandir(img_dir) if e.name in keep), key=lambda e: e.name)
            names = [str(Path(e.path).relative_to(root)) for e in entries]
            stamp = ";".join(f"{e.name}:{e.stat().st_size}:{e.stat().st_mtime_ns}" for e in entries)
            return _Listing(kind, names, lambda n: (root / n).read_bytes(), stamp)
    found, unreadable = _walk(root)
    stamp = ";".join(f"{n}:{st.st_size}:{st.st_mtime_ns}" for n, st in found)
    return _Listing("folder", [n for n, _ in found], lambda n: (root / n).read_bytes(), stamp, unreadable)


def _walk(root: Path) -> tuple[list[tuple[str, os.stat_result]], list[str]]:
    """Image files under root (relative name and stat, sorted) and what could not be listed: unreadable
    folders, broken links and link loops, each '<name> (<reason>)'. Links to folders are not followed."""
    found, unreadable = [], []

    def on_error(err: OSError) -> None:
        unreadable.append(f"{_show(os.path.relpath(err.filename, root))} ({type(err).__name__}: {err.strerror})")

    for folder, _, files in os.walk(root, onerror=on_error):
        for file in files:
            path = os.path.join(folder, file)
            if Path(file).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                st = os.stat(path)
            except OSError as err:  # a link loop (ELOOP) or a broken link
                unreadable.append(f"{_show(os.path.relpath(path, root))} ({type(err).__name__}: {err.strerror})")
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((os.path.relpath(path, root), st))
    return sorted(found, key=lambda f: f[0]), unreadable


def _show(name: str) -> str:
    """A file name for messages, whatever bytes it is made of (names need not be valid UTF-8)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _zip_listing(path: Path, split: str) -> _Listing:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"cannot open zip {path}: {err}") from None
    members = [m for m in archive.namelist() if not m.endswith("/")]
    partitions = [m for m in members if Path(m).name in ("list_eval_partition.csv", "list_eval_partition.txt")]
    images = [m for m in members if Path(m).suffix.lower() in IMAGE_SUFFIXES]
    kind = "zip"
    if partitions and any("img_align_celeba/" in m for m in images):
        keep = _read_partition(archive.read(partitions[0]).decode(), split)
        images = [m for m in images if "img_align_celeba/" in m and Path(m).name in keep]
        kind = "celeba-zip"
    stat = path.stat()
    return _Listing(kind, sorted(images), archive.read, f"{stat.st_size}:{stat.st_mtime_ns}")


def _listing(path: Path, split: str) -> _Listing:
    if not path.exists():
        raise UserError(f"data path not found: {path}")
    if path.is_file():
        if path.suffix.lower() != ".zip":
            raise UserError(f"data path {path} is a file; give a folder, a .zip or 'synthetic'")
        listing = _zip_listing(path, split)
    else:
        listing = _folder_listing(path, split)
    if not listing.names:
        raise UserError(
            f"no images found in {path} (looked for {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} files, recursively)"
        )
    return listing


# ---------------------------------------------------------------- decoding and preprocessing


def preprocess(data: bytes, resolution: int) -> np.ndarray:
    """Decode an image, center-crop it square and resize it with antialiasing: uint8 (3, R, R)."""
    return _preprocess(data, resolution)[0]


def _preprocess(data: bytes, resolution: int) -> tuple[np.ndarray, int]:
    """preprocess(), and the short side the image had before it was resized."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grey: convert("RGB") would clip to white
            depth = 65535.0 if img.mode.startswith("I;16") or np.asarray(img).max() > 255 else 255.0
            img = Image.fromarray(np.round(np.asarray(img, dtype=np.float64) * (255.0 / depth)).astype(np.uint8))
        img = img.convert("RGB")  # grayscale, palette and RGBA all become RGB
        w, h = img.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1), s


def _decode_chunk(args: tuple[list[bytes], int]) -> list[tuple[np.ndarray, int] | str]:
    blobs, resolution = args
    out: list[tuple[np.ndarray, int] | str] = []
    for blob in blobs:
        try:
            out.append(_preprocess(blob, resolution))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            out.append(f"{type(err).__name__}: {err}")
    return out


def _synthetic_chunk(args: tuple[int, int, int]) -> np.ndarray:
    start, stop, resolution = args
    return np.stack([synthetic.draw_face(i, resolution) for i in range(start, stop)])


def _workers() -> int:
    return max(1, min(cores.usable(), 8))


# ---------------------------------------------------------------- the cache


def _write(dest: Path, chunks: Iterator[np.ndarray], count_max: int, resolution: int, meta: dict) -> int:
    """Stream image chunks into dest/images.npy, then trim it and write meta.json last (it marks done)."""
    dest.mkdir(parents=True, exist_ok=True)
    trim = dest / "images.trim.npy"
    with atomic_write(dest / "images.npy") as tmp:  # a crash or Ctrl-C mid-way leaves no half-written array
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                          shape=(count_max, 3, resolution, resolution))
        n = 0
        try:
            for chunk in chunks:
                array[n : n + len(chunk)] = chunk
                n += len(chunk)
            array.flush()
        finally:
            del array
        if n != count_max:  # skipped files: rewrite at the exact size so the array has no blank rows
            try:
                full = np.load(tmp, mmap_mode="r")
                trimmed = np.lib.format.open_memmap(trim, mode="w+", dtype=np.uint8,
                                                    shape=(n, 3, resolution, resolution))
                trimmed[:] = full[:n]
                trimmed.flush()
                del trimmed, full
                os.replace(trim, tmp)
            finally:
                trim.unlink(missing_ok=True)
    write_text(dest / "meta.json", json.dumps({**meta, "images": n}, indent=2))
    return n


def _open(dest: Path) -> tuple[np.ndarray, dict] | None:
    meta_path = dest / "meta.json"
    if not meta_path.exists():
        return None
    return np.load(dest / "images.npy", mmap_mode="r"), json.loads(meta_path.read_text())


def _prepare_synthetic(count: int, resolution: int, progress: bool) -> Prepared:
    fingerprint = hashlib.sha256(f"synthetic:v{synthetic.VERSION}:{count}:{resolution}".encode()).hexdigest()[:16]
    dest = cache_root() / "data" / f"synthetic-{fingerprint}"
    with file_lock(dest.with_suffix(".lock")):  # concurrent workers prepare once, the others wait and reuse
        return _prepare_synthetic_locked(dest, fingerprint, count, resolution, progress)


def _prepare_synthetic_locked(dest: Path, fingerprint: str, count: int, resolution: int, progress: bool) -> Prepared:
    cached = _open(dest)
    if cached is None:
        from tqdm import tqdm

        log.info("drawing %d synthetic faces at %dx%d (once; cached in %s)", count, resolution, resolution, dest)
        jobs = [(s, min(s + _CHUNK, count), resolution) for s in range(0, count, _CHUNK)]
        with ProcessPoolExecutor(_workers()) as pool:
            chunks = tqdm(pool.map(_synthetic_chunk, jobs), total=len(jobs), desc="drawing faces",
                          unit="chunk", disable=not progress)
            meta = {"name": "synthetic", "source": "synthetic", "split": "all", "fingerprint": fingerprint,
                    "resolution": resolution, "skipped": 0, "skipped_examples": []}
            _write(dest, chunks, count, resolution, meta)
        cached, from_cache = _open(dest), False
    else:
        from_cache = True
    images, meta = cached
    return Prepared(images, "synthetic", meta["fingerprint"], "synthetic", "all", resolution, 0, from_cache)


def prepare(source: str, split: str = "train", resolution: int = 64, synthetic_images: int = 5000,
            progress: bool = True) -> Prepared:
    """Prepare (or reuse) a data set; the log says which. Bad paths and unreadable sets are UserErrors."""
    if split not in (*SPLITS, "all"):
        raise UserError(f"unknown split {split!r}; choose train, valid, test or all")
    if source == "synthetic":
        return _prepare_synthetic(synthetic_images, resolution, progress)
    path = Path(source).expanduser().resolve()
    listing = _listing(path, split)
    split_used = split if listing.kind.startswith("celeba") else "all"
    key = hashlib.sha256(
        os.fsencode(f"{path}|{listing.kind}|{split_used}|{resolution}|{PREPROCESSING}|{listing.stamp}")
    ).hexdigest()[:16]
    dest = cache_root() / "data" / f"{path.name}-{split_used}-{resolution}-{key}"
    with file_lock(dest.with_suffix(".lock")):  # concurrent workers prepare once, the others wait and reuse
        return _prepare_locked(dest, path, listing, split_used, resolution, progress)


def _prepare_locked(dest: Path, path: Path, listing: _Listing, split_used: str, resolution: int,
                    progress: bool) -> Prepared:
    cached = _open(dest)
    if cached is not None:
        images, meta = cached
        log.info("reusing prepared data %s (%d images, fingerprint %s): no decoding", dest, len(images),
                 meta["fingerprint"])
        return _said(Prepared(images, meta["name"], meta["fingerprint"], str(path), split_used, resolution,
                              meta["skipped"], True, meta.get("smaller", 0), meta.get("smallest", 0)))

    from tqdm import tqdm

    log.info("preparing %d images from %s (%s, split %s) at %dx%d into %s", len(listing.names), path,
             listing.kind, split_used, resolution, resolution, dest)
    digest = hashlib.sha256(f"{PREPROCESSING}|{resolution}".encode())
    skipped: list[str] = list(listing.unreadable)
    read_errors: dict[str, str] = {}
    sides: list[int] = []  # short sides below the resolution

    def chunks() -> Iterator[np.ndarray]:
        batches = [listing.names[i : i + _CHUNK] for i in range(0, len(listing.names), _CHUNK)]

        def blobs() -> Iterator[tuple[list[bytes], int]]:
            for names in batches:
                data = []
                for n in names:
                    digest.update(os.fsencode(n))
                    try:
                        data.append(listing.read(n))
                    except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as err:  # unreadable, bad zip member
                        read_errors[n] = f"{type(err).__name__}: {err}"
                        data.append(b"")
                    digest.update(hashlib.sha256(data[-1]).digest())
                yield data, resolution

        with ProcessPoolExecutor(_workers()) as pool:
            bar = tqdm(total=len(listing.names), desc="preparing", unit="img", disable=not progress)
            for names, results in zip(batches, pool.map(_decode_chunk, blobs()), strict=True):
                good = []
                for name, result in zip(names, results, strict=True):
                    if isinstance(result, str):
                        skipped.append(f"{_show(name)} ({read_errors.get(name, result)})")
                    else:
                        good.append(result[0])
                        if result[1] < resolution:
                            sides.append(result[1])
                bar.update(len(names))
                if good:
                    yield np.stack(good)
            bar.close()

    meta = {"name": "celeba" if listing.kind.startswith("celeba") else path.name, "source": str(path),
            "split": split_used, "resolution": resolution, "kind": listing.kind}
    # The fingerprint is only known after every byte was read, so meta.json is completed afterwards.
    n = _write(dest, chunks(), len(listing.names), resolution, {**meta, "fingerprint": "", "skipped": 0})
    meta.update(fingerprint=digest.hexdigest()[:16], skipped=len(skipped), skipped_examples=skipped[:5], images=n,
                smaller=len(sides), smallest=min(sides, default=0))
    if n == 0:
        for leftover in dest.iterdir():
            leftover.unlink()
        dest.rmdir()
        raise UserError(f"no readable image in {path}: all {len(skipped)} files failed to decode "
                        f"(first: {skipped[0]})")
    write_text(dest / "meta.json", json.dumps(meta, indent=2))
    if skipped:
        log.warning("skipped %d unreadable files, e.g. %s", len(skipped), "; ".join(skipped[:3]))
    images = np.load(dest / "images.npy", mmap_mode="r")
    return _said(Prepared(images, meta["name"], meta["fingerprint"], str(path), split_used, resolution,
                          len(skipped), False, len(sides), min(sides, default=0)))


def _said(prepared: Prepared) -> Prepared:
    """A set whose images were partly smaller than the resolution says so each time it is used: they were
    upscaled, and whatever is measured on them measures the upscaling too."""
    if prepared.smaller:
        r, s = prepared.resolution, prepared.smallest
        log.warning("%d of the images in %s are smaller than %dx%d (the smallest %dx%d): upscaled to %dx%d",
                    prepared.smaller, prepared.source, r, r, s, s, r, r)
    return prepared
