"""FID, KID, IS and precision/recall through torch-fidelity (and the samples' diversity beside the real images'),
with real features cached by our own key.

Images go to the Inception network in memory as uint8 NCHW; no PNGs on disk. The real side's features
are computed once per (dataset fingerprint, split, resolution, N, weights hash) and reused by every
later run and study: torch-fidelity's own cache is keyed by a name only and never invalidates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from benchmark.atomic import atomic_write, save_torch
from benchmark.data import Prepared, cache_root
from benchmark.device import autocast, pick_device
from benchmark.errors import UserError
from benchmark.filelock import file_lock
from benchmark.inception import FEATURE_EXTRACTOR, InceptionWeights, feature_extractor, resolve_weights
from benchmark.progress import SAMPLING_PROGRESS

log = logging.getLogger(__name__)

SMALL_N = 2000  # below this many samples FID is strongly biased: a trend, not a comparable number
PRC_NEIGHBOURS = 3  # torch-fidelity's k for precision/recall (Kynkaanniemi et al.)
PAIR_ROWS = 1024  # rows of the pairwise-distance matrix held at once (diversity)
MIN_IMAGES = PRC_NEIGHBOURS + 1  # each image's k-th neighbour in its own set, itself included


@dataclass
class Features:
    pool: torch.Tensor  # (N, 2048) float32
    logits: torch.Tensor | None  # (N, 1008) unbiased logits, when the weights have them


class Evaluator:
    """Holds the Inception network and scores uint8 image sets against cached real features."""

    def __init__(self, weights: InceptionWeights | None = None, batch_size: int = 64, progress: bool = True,
                 precision: str = "fp32", device: torch.device | None = None):
        self.weights = weights or resolve_weights()
        # channels_last is an honest speed-up on CPU: same fp32 arithmetic, ~1.3x faster here.
        self.device = device or pick_device()  # a rank's own GPU, where it evaluates its share
        self.net = feature_extractor(self.weights).to(self.device, memory_format=torch.channels_last)
        # fp32 unless asked: bf16 autocast features keep FID within 0.5% but move KID, our leading metric,
        # by 1-3% (docs/ARCHITECTURE.md). The precision is provenance: mixed sets are never compared.
        self.precision = precision
        self.batch_size = batch_size
        self.progress = progress
        self.seconds = 0.0
        self.images = 0

    def features(self, batches: Iterable[torch.Tensor] | np.ndarray | torch.Tensor, total: int | None = None,
                 desc: str = "inception") -> Features:
        """Inception features of uint8 (N,3,H,W) images given as an array or an iterable of batches."""
        if isinstance(batches, (np.ndarray, torch.Tensor)):
            array = batches
            total = len(array)
            batches = (torch.as_tensor(np.array(array[i : i + self.batch_size])) if isinstance(array, np.ndarray)
                       else array[i : i + self.batch_size] for i in range(0, len(array), self.batch_size))
        pools, logits = [], []
        start = time.perf_counter()
        with torch.inference_mode(), autocast(self.device, self.precision), \
                tqdm(total=total, desc=desc, unit="img", disable=not self.progress, leave=False) as bar:
            for batch in batches:
                out = self.net(batch.to(self.device))
                pools.append(out[0].float().cpu())
                if self.weights.has_logits:
                    logits.append(out[1].float().cpu())
                bar.update(len(batch))
        self.seconds += time.perf_counter() - start
        n = sum(len(p) for p in pools)
        self.images += n
        return Features(torch.cat(pools), torch.cat(logits) if logits else None)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def real_features(self, data: Prepared, n: int) -> tuple[Features, bool]:
        """Features of the first n real images (a fixed, seeded subset), cached; returns (features, from_cache)."""
        n = min(n, len(data))
        key = f"{data.fingerprint}-{data.split}-{data.resolution}-n{n}-{self.weights.sha256}" + \
            ("" if self.precision == "fp32" else f"-{self.precision}")
        path = cache_root() / "real_stats" / f"{key}.pt"
        with file_lock(path.with_suffix(".lock")):  # study workers compute them once, the others reuse
            return self._real_features_locked(data, n, path)

    def _real_features_locked(self, data: Prepared, n: int, path) -> tuple[Features, bool]:
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            log.info("reusing cached real statistics %s (%d images)", path.name, n)
            return Features(saved["pool"], saved.get("logits")), True
        index = np.sort(np.random.default_rng(0).permutation(len(data))[:n])
        log.info("computing real statistics on %d images of %s (once; cached as %s)", n, data.name, path.name)
        feats = self.features(np.asarray(data.images[index]), desc="real statistics")
        with atomic_write(path) as tmp:
            save_torch({"pool": feats.pool, **({"logits": feats.logits} if feats.logits is not None else {})}, tmp)
        return feats, False


def eval_batches(n: int, batch_size: int, rank: int = 0, ranks: int = 1) -> list[tuple[int, int]]:
    """(index, size) of the evaluation batches rank draws: every ranks-th of the batches of n, so K ranks
    share the work and together draw exactly the batches one process draws."""
    return [(b, min(batch_size, n - start)) for b, start in enumerate(range(0, n, batch_size)) if b % ranks == rank]


def batch_generator(seed: int, index: int) -> torch.Generator:
    """The noise of evaluation batch `index`: seeded by the run's seed and the index alone, so whichever rank
    draws a batch draws the same images."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed + 777, index]).generate_state(1)[0]))


def sample_for_eval(model, n: int, seed: int, batch_size: int, progress: bool = False, rank: int = 0,
                    ranks: int = 1) -> tuple[list[torch.Tensor], float]:
    """rank's share of n uint8 samples, in batches from generators seeded only for evaluation; returns
    (batches, seconds). The same seeds at every eval point and in `bench eval`, so scores of one run differ by
    training alone, and K ranks' shares joined in batch order are the images one process draws."""
    start = time.perf_counter()
    mine = eval_batches(n, batch_size, rank, ranks)
    batches = []
    with tqdm(total=sum(size for _, size in mine), desc="sampling", unit="img", disable=not progress, leave=False,
              bar_format="{l_bar}{bar}| {n:.0f}/{total} img [{elapsed}<{remaining}]") as bar:
        for index, size in mine:
            batches += draw(model, size, batch_generator(seed, index), size, bar=bar)
    return batches, time.perf_counter() - start


def draw(model, n: int, generator: torch.Generator, batch_size: int, progress: bool = False,
         desc: str = "sampling", bar: tqdm | None = None) -> list[torch.Tensor]:
    """n uint8 samples from a family, batch_size at a time, from one generator. The bar (its own, or one the
    caller shows) moves with every network pass of a diffusion sampler, not only at the end of a batch."""
    out = []
    with (nullcontext(bar) if bar is not None else
          tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False,
               bar_format="{l_bar}{bar}| {n:.0f}/{total} img [{elapsed}<{remaining}]")) as bar:
        for i in range(0, n, batch_size):
            size = min(batch_size, n - i)
            done = [0.0]

            def advance(fraction: float, size: int = size, done: list = done) -> None:
                done[0] += fraction
                bar.update(size * fraction)

            token = SAMPLING_PROGRESS.set(advance if not bar.disable else None)
            try:
                out.append(model.sample(size, generator))
            finally:
                SAMPLING_PROGRESS.reset(token)
            bar.update(size * (1.0 - done[0]))  # the rest of the batch (all of it for a one-pass GAN)
    return out


def frechet_distance(fake: torch.Tensor, real: torch.Tensor) -> float:
    """FID between two feature sets: torch-fidelity's statistics, the trace term tr sqrt(S1 S2) exactly.

    torch-fidelity takes the eigenvalues of the general 2048 x 2048 product S1 S2 (about 6 s on a 2-core
    CPU, and most of them round-off when a set has fewer than 2049 images). The product's non-zero
    eigenvalues are those of the symmetric X S_other X^T, X the smaller set's centred features / sqrt(n-1):
    an n x n problem. With both sets larger than the feature dimension, S1^1/2 S2 S1^1/2 is symmetric
    with the same eigenvalues. Equal to torch-fidelity's value to ~1e-7 (tests/test_metrics.py)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    # float64 before the covariance: at 2048 dims float32 sums lose digits FID depends on.
    stats = [fid_features_to_statistics(x.double()) for x in (fake, real)]
    (mu1, s1), (mu2, s2) = [(st["mu"], st["sigma"]) for st in stats]
    small, other = (fake, s2) if len(fake) <= len(real) else (real, s1)
    if len(small) - 1 < s1.shape[0]:
        x = small.double().numpy()
        x = (x - x.mean(0)) / np.sqrt(len(x) - 1)
        eig = np.linalg.eigvalsh(x @ other @ x.T)
    else:
        w, v = np.linalg.eigh(s1)
        root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        eig = np.linalg.eigvalsh(root @ s2 @ root)
    trace_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()  # PSD: negatives are round-off
    # A distance: identical sets give round-off around 0 (-3e-08), which is 0. (KID keeps its sign: it is
    # an unbiased estimate and may be negative.)
    return max(0.0, float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt))


def mean_pairwise_distance(pool: torch.Tensor) -> float:
    """Mean Euclidean distance between two different images of a set in Inception pool space (over all ordered
    pairs i != j: an unbiased estimate of E|x - x'|, so sets of any size compare). float64, as in nearest; in
    blocks of rows, so the seed's 10,000 images need 80 MB at a time rather than the whole 800 MB matrix."""
    pool, n = pool.double(), len(pool)
    total = sum(float(torch.cdist(pool[i : i + PAIR_ROWS], pool).sum()) for i in range(0, n, PAIR_ROWS))
    return total / (n * (n - 1))


def diversity(fake: torch.Tensor, real: torch.Tensor) -> float:
    """The samples' mean pairwise distance over the real images': 1 is as varied as the real faces, below 1 is
    samples more alike than faces are (modes collapsing: one face repeated reads 0; white noise reads low too,
    every noise image looks alike to Inception), above 1 is spread the faces do not have. The pairwise spread GAN
    papers check for mode collapse (Odena et al. 2017 with MS-SSIM), in the features FID uses; unlike recall it
    needs no sample to land near a real image, so it reads while quality is still poor. Read it beside KID."""
    return mean_pairwise_distance(fake) / mean_pairwise_distance(real)


def score(fake: Features, real: Features, weights: InceptionWeights, kid_subset_size: int = 1000,
          seed: int = 2020) -> dict[str, float]:
    """FID, KID, precision/recall (and IS where logits exist) from features, by torch-fidelity's formulas
    (FID's trace term solved as a symmetric eigenproblem: see frechet_distance), and diversity."""
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    n = min(len(fake.pool), len(real.pool))
    if n < MIN_IMAGES:
        raise UserError(f"scoring needs at least {MIN_IMAGES} images a side (precision/recall take each image's "
                        f"{PRC_NEIGHBOURS} nearest neighbours in its own set); got {len(fake.pool)} generated and "
                        f"{len(real.pool)} real")
    # Subsets as large as the sets would all be the same draw and KID's spread would read as zero.
    subset = kid_subset_size if n > kid_subset_size else max(2, n // 2)
    kid = kid_features_to_metric(fake.pool.double(), real.pool.double(), kid_subsets=100, kid_subset_size=subset,
                                 rng_seed=seed, verbose=False)
    prc = prc_features_to_metric(fake.pool, real.pool, prc_neighborhood=PRC_NEIGHBOURS,
                                 prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    out = {
        "fid": frechet_distance(fake.pool, real.pool),
        "kid_mean": kid["kernel_inception_distance_mean"],
        "kid_std": kid["kernel_inception_distance_std"],
        "precision": prc["precision"],
        "recall": prc["recall"],
        "diversity": diversity(fake.pool, real.pool),
    }
    if weights.has_logits and fake.logits is not None:
        isc = isc_features_to_metric(fake.logits, splits=min(10, len(fake.logits)), rng_seed=seed)
        out["is"] = isc["inception_score_mean"]
        out["is_std"] = isc["inception_score_std"]
    return out


def sampling_bn(model) -> str:
    """The BatchNorm statistics a family samples with (eval.bn), or n/a for families without BatchNorm."""
    return getattr(model, "bn", "n/a")


def leading_metric(n: int, real: int | None = None) -> str:
    """KID leads below SMALL_N samples, where FID is biased upwards (Binkowski et al. 2018); FID above. The
    smaller set decides: FID's covariance of `real` reference images has rank below `real` however many are
    generated."""
    return "kid_mean" if min(n, real if real is not None else n) < SMALL_N else "fid"


def headline(values: dict[str, float], n: int, real: int | None = None) -> str:
    """One line that leads with the metric that is trustworthy at this N and flags the other, then fidelity and
    diversity (precision, recall, diversity) where they were scored."""
    kid = f"KID x 1000 = {1000 * values['kid_mean']:.2f} ± {1000 * values['kid_std']:.2f}"
    sizes = f"N = {n}" if real is None else f"N = {n} generated vs {real} real"
    spread = (f"; precision {values['precision']:.3f}, recall {values['recall']:.3f}, diversity "
              f"{values['diversity']:.2f} (real images: 1)" if "diversity" in values else "")
    if leading_metric(n, real) == "kid_mean":
        return f"{kid} ({sizes}: KID leads; FID {values['fid']:.1f} is biased upwards below {SMALL_N:,}){spread}"
    return f"FID = {values['fid']:.2f} ({sizes}), {kid}{spread}"


def provenance(evaluator: Evaluator, n_fake: int, n_real: int, reference: str, bn: str = "n/a") -> dict[str, str]:
    """How a set of numbers was made: logged beside every metric so mixed comparisons can be refused."""
    weights = evaluator.weights
    return {
        "metrics.feature_extractor": FEATURE_EXTRACTOR,
        "metrics.weights_sha256": weights.sha256,
        "metrics.inception_precision": evaluator.precision,
        "metrics.weights_origin": weights.origin,
        "metrics.eval_samples": str(n_fake),
        "metrics.real_samples": str(n_real),
        "metrics.reference": reference,
        "metrics.bn": bn,
        "metrics.is": "available" if weights.has_logits else
                      "unavailable: converted TF weights have no logits layer; set BENCH_INCEPTION_WEIGHTS",
    }
