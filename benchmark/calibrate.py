"""`bench calibrate`: this machine's throughput, ours side by side with the usual route, in one process.

Training: our default DCGAN path (prepared uint8 cache, the family's train_step with the spec's default
precision and memory format) against the PyTorch DCGAN tutorial pipeline (torchvision ImageFolder,
PIL decoding per batch in DataLoader workers, fp32, contiguous tensors). Evaluation: our in-memory
Inception pass with cached real statistics against writing PNGs and calling torch-fidelity on folders,
and the Inception network in each precision. A fraction of peak is always against the measured matmul
peak of the precision that path computes in (bf16 peaks are ~2x fp32 ones where bf16 is fast).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.cores import usable
from benchmark.data import prepare
from benchmark.device import resolve_precision
from benchmark.errors import UserError
from benchmark.models.dcgan import DCGAN, DEFAULTS, Discriminator, Generator, dcgan_init
from benchmark.spec import build_spec
from benchmark.tracking import cpu_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 10) -> float:
    """Measured FLOP/s of a large square matmul: the practical peak that MFU is a fraction of."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


@functools.cache
def peak(precision: str, device_type: str = "cpu") -> float:
    """The matmul peak of a precision on this device, measured once per process."""
    return matmul_peak(torch.device(device_type), DTYPES[precision])


class PeakMemory:
    """Peak resident memory (MiB) of this process inside a `with` block: Linux's high-water mark, reset on
    entry (clear_refs 5), so each family's figure is its own and not the largest so far. None elsewhere."""

    def __enter__(self) -> PeakMemory:
        self.mib = None
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._status = Path("/proc/self/status")
        except OSError:
            self._status = None
        return self

    def __exit__(self, *_) -> None:
        if self._status is not None:
            found = re.search(r"VmHWM:\s+(\d+) kB", self._status.read_text())
            self.mib = int(found.group(1)) / 1024 if found else None


def machine_line(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return f"{name}, cores usable: {usable()}, torch threads: {torch.get_num_threads()}"


def _tutorial_loader(root: Path, batch_size: int):
    import torchvision.datasets as dset
    import torchvision.transforms as T

    folder = root / "img_align_celeba"  # ImageFolder wants class subfolders: the Kaggle layout has one
    if not folder.is_dir():
        raise UserError(f"the tutorial pipeline needs CelebA in the Kaggle layout; not found under {root}")
    dataset = dset.ImageFolder(str(folder), transform=T.Compose([
        T.Resize(64), T.CenterCrop(64), T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]))
    # The tutorial's 2 workers, never more than the cores: more decode processes than cores only queue
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=min(2, usable()),
                                       drop_last=True)


def _tutorial_step(netG, netD, optG, optD, real: torch.Tensor) -> None:
    """The PyTorch DCGAN tutorial's step, as users write it."""
    b = real.size(0)
    netD.zero_grad()
    label = torch.full((b,), 1.0)
    errD_real = F.binary_cross_entropy(netD(real), label)
    errD_real.backward()
    fake = netG(torch.randn(b, 100, 1, 1))
    label.fill_(0.0)
    errD_fake = F.binary_cross_entropy(netD(fake.detach()), label)
    errD_fake.backward()
    optD.step()
    netG.zero_grad()
    label.fill_(1.0)
    errG = F.binary_cross_entropy(netD(fake), label)
    errG.backward()
    optG.step()


def _timed(step, batches, steps: int) -> tuple[float, float]:
    """(images/s over `steps` steps, FLOPs per image), the FLOPs counted on one warm-up step."""
    from torch.utils.flop_counter import FlopCounterMode

    iterator = iter(batches)
    first = next(iterator)
    with FlopCounterMode(display=False) as counter:
        step(first)
    flops_per_image = counter.get_total_flops() / len(first[0] if isinstance(first, (list, tuple)) else first)
    n, start = 0, time.perf_counter()
    for batch in itertools.islice(iterator, steps):
        step(batch)
        n += len(batch[0]) if isinstance(batch, (list, tuple)) else len(batch)
    return n / (time.perf_counter() - start), flops_per_image


def training(data: str, steps: int = 8, batch_size: int = 128) -> dict[str, float]:
    """Print and return DCGAN training images/s: ours, the tutorial's, their ratio, and the FLOP/s fraction."""
    device = torch.device("cpu")
    root = Path(data).expanduser()
    if not root.exists():
        raise UserError(f"data path not found: {root}")
    prepared = prepare(str(root), "all", 64, progress=False)
    spec = build_spec("dcgan", DEFAULTS, overrides=[f"batch_size={batch_size}"])
    precision = resolve_precision(spec.precision, device)
    torch.manual_seed(0)
    ours = DCGAN(spec, device, precision)
    flops_per_image = ours.flops_per_train_image()
    rng = np.random.default_rng(0)

    def our_batches():
        while True:
            idx = rng.integers(0, len(prepared), batch_size)
            yield torch.from_numpy(np.asarray(prepared.images[idx])).float().div_(127.5).sub_(1.0)

    netG, netD = Generator().apply(dcgan_init), Discriminator().apply(dcgan_init)
    optG = torch.optim.Adam(netG.parameters(), lr=1e-4, betas=(0.5, 0.9999))
    optD = torch.optim.Adam(netD.parameters(), lr=1e-4, betas=(0.5, 0.9999))
    loader = _tutorial_loader(root, batch_size)

    print(f"{machine_line(device)}; precision picked: {precision} (precision = {spec.precision})")
    print(f"DCGAN training, batch {batch_size}, {steps} timed steps each; the tutorial's DataLoader workers: "
          f"{loader.num_workers}")
    theirs_ips, theirs_flops = _timed(lambda b: _tutorial_step(netG, netD, optG, optD, b[0]),
                                      itertools.cycle(loader), steps)
    ours_ips, _ = _timed(ours.train_step, our_batches(), steps)
    result = {
        "ours_img_per_s": ours_ips,
        "tutorial_img_per_s": theirs_ips,
        "ratio": ours_ips / theirs_ips,
        "precision": precision,
        "flops_per_image": flops_per_image,
        "tutorial_flops_per_image": theirs_flops,
        "peak_flops": peak(precision),
        "tutorial_peak_flops": peak("fp32"),
        "ours_fraction_of_peak": ours_ips * flops_per_image / peak(precision),
        "tutorial_fraction_of_peak": theirs_ips * theirs_flops / peak("fp32"),
        "dataloader_workers": loader.num_workers,
    }
    print(f"  tutorial (ImageFolder + PIL per batch, fp32, contiguous)  {theirs_ips:8.1f} img/s"
          f"   {result['tutorial_fraction_of_peak']:.1%} of the fp32 peak")
    print(f"  ours ({precision}, channels_last={spec.channels_last}, prepared cache)      {ours_ips:8.1f} img/s"
          f"   {result['ours_fraction_of_peak']:.1%} of the {precision} peak")
    peaks = ", ".join(f"{p} {peak(p) / 1e9:.0f}" for p in dict.fromkeys(("fp32", precision)))
    print(f"  ratio ours/tutorial: {result['ratio']:.2f}x   ({flops_per_image / 1e9:.2f} GFLOP per training image, "
          f"tutorial {theirs_flops / 1e9:.2f}; matmul peaks measured: {peaks} GFLOP/s)")
    return result


def evaluation(data: str, n: int = 64) -> dict[str, float]:
    """Time scoring n generated images: ours (in memory, cached real features) vs PNGs + torch-fidelity."""
    import torch_fidelity
    from PIL import Image

    from benchmark.metrics import Evaluator, score

    real_set = prepare(data, "valid", 64, progress=False)
    fake_set = prepare("synthetic", "all", 64, synthetic_images=max(n, 64), progress=False)
    fake = np.asarray(fake_set.images[:n])
    evaluator = Evaluator(progress=False)
    real, _ = evaluator.real_features(real_set, n)  # warm: the cached-statistics case is the one we claim

    start = time.perf_counter()
    ours = score(evaluator.features(fake), real, evaluator.weights)
    ours_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for sub, images in (("fake", fake), ("real", np.asarray(real_set.images[np.sort(
                np.random.default_rng(0).permutation(len(real_set))[:n])]))):
            (Path(tmp) / sub).mkdir()
            for i, img in enumerate(images):
                Image.fromarray(img.transpose(1, 2, 0)).save(Path(tmp) / sub / f"{i:06d}.png")
        theirs = torch_fidelity.calculate_metrics(
            input1=str(Path(tmp) / "fake"), input2=str(Path(tmp) / "real"), fid=True, kid=True,
            kid_subset_size=n // 2, cache=False, verbose=False, cuda=torch.cuda.is_available(),
            # its only knob for its DataLoader: otherwise min(4, 2 x CPUs) decode workers, more than the cores
            save_cpu_ram=True,
            feature_extractor_weights_path=str(evaluator.weights.path))
        theirs_s = time.perf_counter() - start
    print(f"Evaluation of {n} generated images (FID + KID)")
    print(f"  usual route (PNGs on disk, torch-fidelity on folders, real recomputed) {theirs_s:7.1f} s"
          f"  FID {theirs['frechet_inception_distance']:.3f}")
    print(f"  ours (in memory, cached real statistics, channels_last, {evaluator.precision})         {ours_s:7.1f} s"
          f"  FID {ours['fid']:.3f}   {n / ours_s:.2f} img/s")
    print(f"  ratio: {theirs_s / ours_s:.2f}x faster")
    return {"ours_seconds": ours_s, "theirs_seconds": theirs_s, "ratio": theirs_s / ours_s,
            "images_per_second": n / ours_s, "fid_ours": ours["fid"],
            "fid_theirs": theirs["frechet_inception_distance"], "precision": evaluator.precision}


def inception(data: str, n: int = 500) -> dict[str, dict]:
    """Inception features in fp32 and bf16 side by side on 3 x n real faces (A, B, and B blurred): images/s,
    the ratio to fp32, peak resident memory, and what each does to FID and KID of A-B and A-blurred B."""
    from benchmark.metrics import Evaluator, score

    prepared = prepare(data, "all", 64, progress=False)
    faces = np.asarray(prepared.images)
    n = min(n, len(faces) // 2)
    order = np.random.default_rng(0).permutation(len(faces))
    a, b = faces[order[:n]], faces[order[n : 2 * n]]
    blurred = blur(b, 1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows: dict[str, dict] = {}
    print(f"Inception features of 3 x {n} real faces of {prepared.name} (A, B, B blurred), per precision "
          f"({machine_line(device)}); eval.precision is fp32 unless a spec says bf16")
    print(f"  {'precision':<10}{'img/s':>8}{'vs fp32':>9}{'peak RSS MiB':>14}{'FID A-B':>18}{'KID x1000 A-B':>20}"
          f"{'FID A-blur':>18}{'KID x1000 A-blur':>20}")
    for precision in ("fp32", "bf16"):
        evaluator = Evaluator(progress=False, precision=precision)
        evaluator.features(a[:8])  # warm-up: oneDNN picks its kernels on the first batches
        evaluator.seconds = evaluator.images = 0
        with PeakMemory() as memory:
            feats = [evaluator.features(x) for x in (a, b, blurred)]
        row = {"img_per_s": evaluator.images_per_second, "peak_rss_mib": memory.mib,
               "real": score(feats[1], feats[0], evaluator.weights),
               "blurred": score(feats[2], feats[0], evaluator.weights)}
        rows[precision] = row
        cells = []
        for pair in ("real", "blurred"):
            for metric, scale in (("fid", 1), ("kid_mean", 1000)):
                value, base = row[pair][metric], rows["fp32"][pair][metric]
                # KID of two real sets is ~0, where a relative change means nothing: in units of its spread
                change = "" if precision == "fp32" else f" ({(value - base) / abs(base):+.2%})" if \
                    metric == "fid" or abs(base) > 2 * rows["fp32"][pair]["kid_std"] else \
                    f" ({(value - base) / rows['fp32'][pair]['kid_std']:+.2f} sd)"
                cells.append(f"{scale * value:.3f}{change}")
        print(f"  {precision:<10}{row['img_per_s']:>8.2f}{row['img_per_s'] / rows['fp32']['img_per_s']:>8.2f}x"
              f"{_mib(memory.mib):>14}{cells[0]:>18}{cells[1]:>20}{cells[2]:>18}{cells[3]:>20}")
    return rows


def blur(images: np.ndarray, radius: float) -> np.ndarray:
    """uint8 NCHW faces through PIL's Gaussian blur: a known degradation that FID and KID must rank."""
    from PIL import Image, ImageFilter

    return np.stack([np.asarray(Image.fromarray(im.transpose(1, 2, 0)).filter(ImageFilter.GaussianBlur(radius)))
                     .transpose(2, 0, 1) for im in images])


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _time_family(name: str, prepared, batch_size: int, steps: int, sample_n: int, fraction: float = 0.0,
                 overrides: tuple[str, ...] = ()) -> dict[str, float]:
    """Train images/s, sample images/s and the FLOP/s fraction of one family at its default settings."""
    from benchmark.models import family

    cls, defaults = family(name)
    spec = build_spec(name, defaults, overrides=[f"batch_size={batch_size}", *overrides])
    device = torch.device("cpu")
    model = cls(spec, device, resolve_precision(spec.precision, device))
    rng = np.random.default_rng(0)

    def step() -> None:
        idx = rng.integers(0, len(prepared), batch_size)
        batch = torch.from_numpy(np.array(prepared.images[idx])).float().div_(127.5).sub_(1.0)
        model.train_step(batch, indices=idx, fraction=fraction, data=prepared)

    # Not _timed: its FLOP counter refuses WGAN-GP's gradient penalty (autograd.grad on a leaf).
    with PeakMemory() as memory:
        step()  # warm-up (and, for ldm's second stage, encoding the data once)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        train_ips = steps * batch_size / (time.perf_counter() - start)
        start = time.perf_counter()
        model.sample(sample_n, torch.Generator().manual_seed(0))
        sample_ips = sample_n / (time.perf_counter() - start)
    return {"train_img_per_s": train_ips, "sample_img_per_s": sample_ips, "gflops_per_image":
            model.flops_per_train_image() / 1e9, "sample_gflops": model.flops_per_sample() / 1e9,
            "sample_nfe": model.sample_nfe, "train_flops_per_s": train_ips * model.flops_per_train_image(),
            "precision": model.precision, "peak_rss_mib": memory.mib}


def families(data: str, batch_size: int = 16, steps: int = 3, sample_n: int = 4) -> dict[str, dict]:
    """Every family at its default settings on this machine: train and sample images/s, fraction of peak."""
    prepared = prepare(str(Path(data).expanduser()), "all", 64, progress=False) if data != "synthetic" else \
        prepare("synthetic", "all", 64, synthetic_images=512, progress=False)
    # Steps draw from the first 512 images: what is timed is the same, and the latent diffusion row's one-off
    # encoding of its data (untimed warm-up) is 512 images, not a whole download (6,030 took minutes here).
    n = min(len(prepared), max(512, batch_size * (steps + 1)))
    prepared = dataclasses.replace(prepared, images=prepared.images[:n], fingerprint=f"{prepared.fingerprint}-first{n}")
    rows = {}
    print(f"Every family at its default settings, batch {batch_size}, {steps} timed steps "
          f"({machine_line(torch.device('cpu'))}); 'of peak' is against the matmul peak of the family's precision; "
          "peak RSS is this process's high-water mark during the row, what it already holds included")
    print(f"  {'family':<22}{'precision':>10}{'train img/s':>12}{'GFLOP/img':>11}{'of peak':>9}{'sample img/s':>14}"
          f"{'NFE':>5}{'peak RSS MiB':>14}")
    for name, fraction in (("dcgan", 0.0), ("wgan-gp", 0.0), ("ddpm", 0.0), ("ldm", 0.0), ("ldm", 0.5)):
        label = name if name != "ldm" else f"ldm ({'autoencoder' if fraction == 0 else 'latent diffusion'})"
        row = _time_family(name, prepared, batch_size, steps, sample_n, fraction)
        row["fraction_of_peak"] = row["train_flops_per_s"] / peak(row["precision"])
        rows[label] = row
        print(f"  {label:<22}{row['precision']:>10}{row['train_img_per_s']:>12.1f}{row['gflops_per_image']:>11.2f}"
              f"{row['fraction_of_peak']:>9.1%}{row['sample_img_per_s']:>14.2f}{row['sample_nfe']:>5}"
              f"{_mib(row['peak_rss_mib']):>14}")
    return rows


def diffusers_ddpm(batch_size: int = 16, steps: int = 3) -> dict[str, float] | None:
    """Our DDPM training step against the same-sized UNet2DModel + DDPMScheduler step of `diffusers`
    (with its EMAModel, as its training example does), side by side in this process."""
    try:
        from diffusers import DDPMScheduler, UNet2DModel
        from diffusers.training_utils import EMAModel
    except ImportError:
        print("diffusers comparison skipped: pip install 'facebench[bench]' (or diffusers) to run it")
        return None
    from benchmark.models.ddpm import DDPM
    from benchmark.models.ddpm import DEFAULTS as DDPM_DEFAULTS

    spec = build_spec("ddpm", DDPM_DEFAULTS, overrides=[f"batch_size={batch_size}"])
    device = torch.device("cpu")
    ours = DDPM(spec, device, resolve_precision(spec.precision, device))
    levels = [64 // 2**i for i in range(len(spec.ch_mult))]
    attn = [r in spec.attn_resolutions for r in levels]
    theirs = UNet2DModel(
        sample_size=64, in_channels=3, out_channels=3, layers_per_block=spec.num_res_blocks,
        block_out_channels=tuple(spec.ch * m for m in spec.ch_mult), dropout=spec.dropout,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        attention_head_dim=max(spec.ch * m for m in spec.ch_mult))  # one head, as in DDPM
    scheduler = DDPMScheduler(num_train_timesteps=spec.timesteps, beta_schedule="linear")
    opt = torch.optim.Adam(theirs.parameters(), lr=spec.lr, betas=(spec.beta1, spec.beta2))
    ema = EMAModel(theirs.parameters(), decay=spec.ema_decay)
    x0 = torch.rand(batch_size, 3, 64, 64) * 2 - 1

    def their_step(_) -> None:
        noise = torch.randn_like(x0)
        t = torch.randint(0, spec.timesteps, (batch_size,))
        loss = F.mse_loss(theirs(scheduler.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), spec.grad_clip)
        opt.step()
        ema.step(theirs.parameters())

    params = (sum(p.numel() for p in ours.net.parameters()), sum(p.numel() for p in theirs.parameters()))
    their_ips, _ = _timed(their_step, itertools.repeat(x0), steps)
    our_ips, _ = _timed(ours.train_step, itertools.repeat(x0), steps)
    print(f"DDPM training step vs diffusers (UNet2DModel + DDPMScheduler + EMAModel), batch {batch_size}, "
          f"{steps} timed steps; parameters ours {params[0] / 1e6:.2f}M, theirs {params[1] / 1e6:.2f}M")
    print(f"  diffusers {their_ips:8.2f} img/s\n  ours      {our_ips:8.2f} img/s\n  ratio ours/diffusers: "
          f"{our_ips / their_ips:.2f}x")
    return {"ours_img_per_s": our_ips, "diffusers_img_per_s": their_ips, "ratio": our_ips / their_ips,
            "ours_params": params[0], "diffusers_params": params[1]}
