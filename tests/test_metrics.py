"""Metrics through the real torch-fidelity network, with weights converted offline, on real faces."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

from benchmark import inception
from benchmark.calibrate import blur
from benchmark.data import prepare
from benchmark.metrics import (
    PAIR_ROWS,
    Evaluator,
    Features,
    diversity,
    frechet_distance,
    headline,
    mean_pairwise_distance,
    provenance,
    score,
)
from conftest import bench_inprocess

N = 48  # per set: FIDs 103 < 123 < 185 < 470 here (blur1 is 4 KID-sigma from real), and cheap for a 2-core CI


@pytest.fixture(scope="module")
def evaluator():
    return Evaluator(progress=False, precision="fp32")


def test_converted_network_matches_torchscript(celeba, evaluator):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    images = torch.from_numpy(np.asarray(prepare(str(celeba), "test", progress=False).images[:6]))
    ours = evaluator.features(images).pool
    scripted = torch.jit.load(str(inception.torchscript_path()), map_location="cpu").eval()
    with torch.no_grad():
        x = interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False)
        theirs = scripted((x - 128) / 128).reshape(len(images), -1, 1).mean(-1)
    assert theirs.shape == ours.shape == (6, 2048)
    assert (ours - theirs).abs().max().item() < 1e-4
    assert evaluator.weights.origin == "converted-fid-helper" and not evaluator.weights.has_logits


@pytest.fixture(scope="module")
def faces(celeba):
    """Disjoint real halves A and B of N faces, B blurred twice as much, and noise: uint8 sets by name."""
    faces = np.asarray(prepare(str(celeba), "train", progress=False).images)
    order = np.random.default_rng(1).permutation(len(faces))
    half_a, half_b = faces[order[:N]], faces[order[N : 2 * N]]
    noise = np.random.default_rng(2).integers(0, 256, half_b.shape, dtype=np.uint8)
    return {"a": half_a, "real": half_b, "blur1": blur(half_b, 1), "blur2": blur(half_b, 2), "noise": noise}


@pytest.fixture(scope="module")
def fp32_features(faces, evaluator):
    return {name: evaluator.features(x) for name, x in faces.items()}


def test_fid_and_kid_order_on_real_faces(fp32_features, evaluator):
    feats, real = fp32_features, fp32_features["a"]
    results = {name: score(feats[name], real, evaluator.weights) for name in ("real", "blur1", "blur2", "noise")}
    # our trace term (an N x N symmetric eigenproblem) against torch-fidelity's own FID on the same features
    theirs = fid_statistics_to_metric(fid_features_to_statistics(feats["blur1"].pool.double()),
                                      fid_features_to_statistics(real.pool.double()), verbose=False)
    assert results["blur1"]["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-5)
    fids = [results[k]["fid"] for k in ("real", "blur1", "blur2", "noise")]
    kids = [results[k]["kid_mean"] for k in ("real", "blur1", "blur2", "noise")]
    assert fids == sorted(fids) and len(set(fids)) == 4, fids
    assert kids == sorted(kids), kids
    assert abs(results["real"]["kid_mean"]) <= 2 * results["real"]["kid_std"], results["real"]
    assert "is" not in results["real"]  # converted weights have no logits: IS is unavailable, never a number
    made = provenance(evaluator, N, N, "celeba:train")
    assert made["metrics.is"].startswith("unavailable") and made["metrics.inception_precision"] == "fp32"


def test_bf16_features_keep_fid_but_move_kid_which_is_why_fp32_is_the_default(faces, fp32_features, evaluator):
    """eval.precision = bf16 on real faces against fp32: FID within 0.5% (0.03% at N = 48 here, on an AMD EPYC
    without AVX512-BF16; 0.06-0.19% at N = 500), KID within a quarter of its own spread but not within 0.5% (1.1% at
    N = 48; 1.5-2.8% at N = 500: bench calibrate --inception), which is why scores are fp32 unless a spec asks; and
    the precision is part of what a score says it is. Two sets only: on CPUs without AVX512-BF16 bf16 is emulated,
    several times slower than fp32."""
    bf16 = Evaluator(evaluator.weights, progress=False, precision="bf16")
    feats = {name: bf16.features(faces[name]) for name in ("a", "blur1")}
    assert not torch.equal(feats["a"].pool, fp32_features["a"].pool)  # computed in bf16, not fp32 again
    ours = score(feats["blur1"], feats["a"], bf16.weights)
    ref = score(fp32_features["blur1"], fp32_features["a"], evaluator.weights)
    assert ours["fid"] == pytest.approx(ref["fid"], rel=0.005)
    assert abs(ours["kid_mean"] - ref["kid_mean"]) < 0.25 * ref["kid_std"]
    assert abs(ours["kid_mean"] - ref["kid_mean"]) > 0.005 * abs(ref["kid_mean"])
    assert provenance(bf16, N, N, "celeba:train")["metrics.inception_precision"] == "bf16"


def test_diversity_is_the_samples_pairwise_spread_over_the_real_images():
    square = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # 4 sides of 1, 2 diagonals of sqrt 2
    two_faces = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # 2 pairs at 0, 4 at 1
    assert diversity(two_faces, square) == pytest.approx(4 / (4 + 2 * 2**0.5), rel=1e-12)
    assert diversity(square, square) == pytest.approx(1.0) and diversity(square[:1].repeat(4, 1), square) == 0


def test_diversity_reads_a_collapse_on_real_faces_that_kid_alone_does_not_show(fp32_features, evaluator):
    feats, real = fp32_features, fp32_features["a"]
    other_half = score(feats["real"], real, evaluator.weights)["diversity"]
    assert 0.9 < other_half < 1.1, other_half  # faces as varied as faces
    # six of those faces, each eight times: a generator collapsed onto a few modes; every image is a real face
    six = Features(feats["real"].pool[:6].repeat(8, 1), None)
    collapsed = score(six, real, evaluator.weights)
    assert collapsed["diversity"] < 0.9 * other_half, (collapsed["diversity"], other_half)
    # not a quality score: every white-noise image looks alike to Inception
    assert score(feats["noise"], real, evaluator.weights)["diversity"] < 0.9 * other_half
    assert "recall 0.0" in headline(collapsed, 48, 48) and "diversity 0." in headline(collapsed, 48, 48)


def test_frechet_distance_equals_torch_fidelity_when_both_sets_exceed_the_feature_dimension():
    """The full-rank branch (both sets > 2048 images), on correlated non-negative features like pool3's."""
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((2048, 2048)) * 0.05
    fake, real = (torch.from_numpy(np.abs(rng.standard_normal((n, 2048)) @ mix + shift)) for n, shift in
                  ((2100, 0.3), (2300, 0.0)))
    theirs = fid_statistics_to_metric(fid_features_to_statistics(fake.double()),
                                      fid_features_to_statistics(real.double()), verbose=False)
    assert frechet_distance(fake, real) == pytest.approx(theirs["frechet_inception_distance"], rel=1e-7)


def test_inception_score_plumbing_with_seeded_logits_head(tmp_path, monkeypatch, celeba):
    """Not real IS weights: a seeded random logits head, only to check that IS flows through our path."""
    converted = inception.resolve_weights()
    state = torch.load(converted.path, weights_only=True)
    gen = torch.Generator().manual_seed(0)
    state["fc.weight"] = torch.randn(1008, 2048, generator=gen)  # peaked enough that images differ in class
    state["fc.bias"] = torch.zeros(1008)
    path = tmp_path / "seeded-logits-head.pth"
    torch.save(state, path)
    monkeypatch.setenv("BENCH_INCEPTION_WEIGHTS", str(path))
    weights = inception.resolve_weights()
    assert weights.has_logits and weights.origin == "env"
    ev = Evaluator(weights, progress=False, precision="fp32")
    images = np.asarray(prepare(str(celeba), "test", progress=False).images[:20])
    feats = ev.features(images)
    assert feats.logits is not None and feats.logits.shape == (20, 1008)
    # torch-fidelity's unbiased logits are the pool features through fc without its bias: our path hands it
    # the right layer and weights
    assert torch.allclose(feats.logits, feats.pool @ state["fc.weight"].T, atol=1e-3)
    values = score(feats, feats, weights)
    same = Features(feats.pool[:1].repeat(10, 1), feats.logits[:1].repeat(10, 1))
    assert score(same, feats, weights)["is"] == pytest.approx(1.0)  # one image ten times: no diversity
    # IS over 10 splits of 2 images: above 1 where the two differ in class, at most 2
    assert 1.0 < values["is"] <= 2 and values["is_std"] >= 0


def test_eval_cli_real_vs_fake_folder_offline(celeba, tmp_path, capsys):
    fake = tmp_path / "fake"
    fake.mkdir()
    for i, img in enumerate(prepare("synthetic", synthetic_images=40, progress=False).images):
        Image.fromarray(np.asarray(img).transpose(1, 2, 0)).save(fake / f"{i:03d}.png")
    code, out, err = bench_inprocess("eval", "--real", str(celeba), "--fake", str(fake), "--samples", "40",
                                     "--json", capsys=capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["fid"] > 0 and "kid_mean" in result and result["is"] == "unavailable"
    assert result["fake_samples"] == 40 and not (tmp_path / "torch-home" / "hub").exists()  # nothing downloaded


def test_mean_pairwise_distance_summed_in_blocks_equals_the_whole_matrix():
    # more rows than one block, and not a multiple of it: every block, the last partial one too, is counted
    pool = torch.randn(2 * PAIR_ROWS + 37, 64, generator=torch.Generator().manual_seed(0))
    n = len(pool)
    whole = float(torch.cdist(pool.double(), pool.double()).sum()) / (n * (n - 1))
    assert mean_pairwise_distance(pool) == pytest.approx(whole, rel=1e-12)
