"""The mathematics of the diffusion families: the forward process, the samplers, memorising one image,
and the latent model's autoencoder learning to reconstruct real faces."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark.data import prepare
from benchmark.models import ddpm, ldm
from benchmark.models.autoencoder import KLAutoencoder
from benchmark.models.diffusion import GaussianDiffusion, timesteps
from benchmark.models.unet import UNet
from benchmark.spec import build_spec

CPU = torch.device("cpu")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_forward_marginals_match_closed_form(schedule):
    """q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I), measured over 100,000 draws per t."""
    diffusion = GaussianDiffusion(schedule, 1000)
    x0 = torch.tensor([-1.0, -0.3, 0.0, 0.5, 1.0])
    gen = torch.Generator().manual_seed(0)
    draws = 100_000
    for t in (0, 10, 250, 500, 999):
        tt = torch.full((draws,), t)
        x_t = diffusion.q_sample(x0.expand(draws, -1), tt, torch.randn(draws, 5, generator=gen))
        ab = float(diffusion.alphas_cumprod[t])
        std_err = (1 - ab) ** 0.5 / draws**0.5
        assert torch.allclose(x_t.mean(0), ab**0.5 * x0, atol=5 * std_err), t
        assert torch.allclose(x_t.var(0), torch.full((5,), 1 - ab), rtol=0.02, atol=1e-6), t
    ab = diffusion.alphas_cumprod
    assert ab[0] > 0.999 and ab[-1] < 1e-3 and bool((ab[1:] < ab[:-1]).all())  # from data to noise


def test_linear_schedule_is_ddpms():
    betas = GaussianDiffusion("linear", 1000).betas
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert timesteps(1000, 10) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert len(timesteps(1000, 1000)) == 1000


def test_ddim_with_eta_zero_is_deterministic_given_x_T():
    torch.manual_seed(0)
    net = UNet(3, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0, resolution=16)
    for p in net.parameters():  # DDPM zero-initialises output layers; make the network say something
        torch.nn.init.normal_(p, 0, 0.05)
    diffusion = GaussianDiffusion("linear", 1000)
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    def run(sampler, eta, seed):
        return diffusion.sample(net, x_T.shape, torch.Generator().manual_seed(seed), CPU, sampler, 20, eta,
                                x_T=x_T.clone())

    assert torch.equal(run("ddim", 0.0, 1), run("ddim", 0.0, 2))  # no randomness beyond x_T
    assert not torch.allclose(run("ddim", 1.0, 1), run("ddim", 1.0, 2))  # eta > 0 draws fresh noise
    assert not torch.allclose(run("ddpm", 0.0, 1), run("ddpm", 0.0, 2))  # ancestral sampling is stochastic
    assert torch.equal(run("ddpm", 0.0, 3), run("ddpm", 0.0, 3))  # ...and reproducible from its generator


def test_tiny_ddpm_trained_on_one_image_samples_it_back(celeba):
    """Trained on a single face until the loss is small, both samplers return that face, not another."""
    data = prepare(str(celeba), "train", 32, progress=False)
    faces = F.avg_pool2d(torch.from_numpy(np.array(data.images[:5])).float() / 127.5 - 1, 2)  # 16x16
    face, others = faces[:1], faces[1:]
    # v-prediction keeps x_0 well-conditioned at high noise, so a few hundred steps suffice on a CPU.
    spec = build_spec("ddpm", ddpm.DEFAULTS, overrides=[
        "resolution=32", "ch=16", "ch_mult=[1, 2]", "num_res_blocks=1", "attn_resolutions=[]", "dropout=0.0",
        "lr=3e-3", "ema_decay=0.99", "prediction=v", "batch_size=8"])
    model = ddpm.DDPM(spec, CPU, "fp32", size=16)
    losses = [model.train_step(face.expand(8, -1, -1, -1))["loss"] for _ in range(300)]
    assert np.mean(losses[-20:]) < 0.15 * np.mean(losses[:5])  # ~0.5 -> ~0.05
    distance_between_faces = ((others - face) ** 2).mean(dim=(1, 2, 3)).min().item()
    for sampler, steps in (("ddim", 50), ("ddpm", 1000)):
        model.sampler, model.sampler_steps = sampler, steps
        samples = model.sample_x0(2, torch.Generator().manual_seed(5))
        mse = ((samples - face) ** 2).mean(dim=(1, 2, 3))
        assert (mse < 0.1).all() and (mse < distance_between_faces / 3).all(), (sampler, mse)


def test_autoencoder_reconstruction_error_falls_with_training(celeba):
    data = prepare(str(celeba), "train", 64, progress=False)
    images = torch.from_numpy(np.array(data.images[:160])).float() / 127.5 - 1
    train, held_out = images[:128], images[128:]
    torch.manual_seed(0)
    ae = KLAutoencoder(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4)
    assert ae.encode(held_out[:2])[0].shape == (2, 4, 16, 16)  # f = 4: 64x64x3 -> 16x16x4
    opt = torch.optim.Adam(ae.parameters(), lr=2e-3, betas=(0.5, 0.9))
    gen = torch.Generator().manual_seed(0)

    def held_out_l1() -> float:
        with torch.no_grad():
            return F.l1_loss(ae.decode(ae.encode(held_out)[0]), held_out).item()

    before = held_out_l1()
    for step in range(40):
        batch = train[(step * 16) % 128 :][:16]
        opt.zero_grad()
        ae.loss(batch, gen, kl_weight=1e-6)[0].backward()
        opt.step()
    after = held_out_l1()
    assert after < 0.6 * before, (before, after)


def test_unet_runs_on_pixels_and_latents():
    for channels, size, mult in ((3, 64, (1, 2, 2, 2)), (4, 16, (1, 2))):
        net = UNet(channels, ch=8, ch_mult=mult, num_res_blocks=1, attn_resolutions=(16, 8), resolution=size)
        x = torch.randn(2, channels, size, size)
        assert net(x, torch.tensor([0, 999])).shape == x.shape


def test_ldm_defaults_are_factor_four():
    spec = build_spec("ldm", ldm.DEFAULTS, overrides=["ae_ch=8", "ch=8", "ch_mult=[1]", "attn_resolutions=[]"])
    model = ldm.LDM(spec, CPU, "fp32")
    assert (model.dm.size, model.dm.channels) == (16, 4)
    assert model.sample(2, torch.Generator().manual_seed(0)).shape == (2, 3, 64, 64)


def _oracle(diffusion, x0, prediction, seen=None):
    """The network that knows the one image x0: from x_t it returns the exact epsilon (or v)."""

    def net(x, t):
        ab = diffusion._ab(t, x)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        if seen is not None:
            seen.append((int(t[0]), x.clone()))
        return eps if prediction == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * x0

    return net


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_with_an_oracle_walks_the_forward_path_back_to_x0(prediction):
    """DDIM (eta = 0) with the exact epsilon of one image stays on x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps_T
    at every step and ends at x0. (Linear schedule: at the cosine schedule's last steps, ab_T ~ 1e-9, an
    epsilon-prediction's float32 round-off is amplified 1 / sqrt(ab_T) times into x0.)"""
    diffusion = GaussianDiffusion("linear", 1000, prediction)
    x0 = torch.linspace(-0.9, 0.9, 3 * 8 * 8).reshape(1, 3, 8, 8)
    x_T = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    seen = []
    out = diffusion.sample(_oracle(diffusion, x0, prediction, seen), x_T.shape, torch.Generator(), CPU, "ddim", 10,
                           0.0, clip=False, x_T=x_T.clone())
    assert torch.allclose(out, x0, atol=1e-4)
    ab_T = float(diffusion.alphas_cumprod[999])
    eps_T = (x_T - ab_T**0.5 * x0) / (1 - ab_T) ** 0.5
    assert [t for t, _ in seen] == timesteps(1000, 10)
    for t, x_t in seen:
        ab = float(diffusion.alphas_cumprod[t])
        assert torch.allclose(x_t, ab**0.5 * x0 + (1 - ab) ** 0.5 * eps_T, atol=1e-4), t


@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 1.0)])
def test_stochastic_samplers_with_an_oracle_keep_the_forward_marginals(sampler, eta):
    """Ancestral DDPM (and DDIM with eta = 1) given the exact x0 draw x_prev from q(x_prev | x_t, x0), so the
    states they visit have the forward marginals N(sqrt(ab_t) x0, 1 - ab_t), measured over 20,000 chains."""
    diffusion = GaussianDiffusion("linear", 1000)
    x0 = torch.tensor([-0.8, 0.0, 0.3, 0.9]).reshape(1, 1, 2, 2)
    seen = []
    out = diffusion.sample(_oracle(diffusion, x0, "eps", seen), (20_000, 1, 2, 2),
                           torch.Generator().manual_seed(0), CPU, sampler, 8, eta, clip=False)
    assert torch.allclose(out, x0.expand_as(out), atol=1e-3)
    for t, x_t in seen[1:]:
        ab = float(diffusion.alphas_cumprod[t])
        std_err = (1 - ab) ** 0.5 / 20_000**0.5
        assert torch.allclose(x_t.mean(0), ab**0.5 * x0[0], atol=5 * std_err + 1e-4), t
        assert torch.allclose(x_t.var(0), torch.full_like(x0[0], 1 - ab), rtol=0.05, atol=1e-5), t


def test_sampling_reports_progress_with_every_network_pass(capsys):
    """A DDIM batch moves the bar after each pass (it sat still for minutes per batch); a GAN's at its end."""
    from benchmark.metrics import draw
    from benchmark.progress import SAMPLING_PROGRESS

    spec = build_spec("ddpm", ddpm.DEFAULTS, overrides=["ch=8", "ch_mult=[1, 2]", "num_res_blocks=1",
                                                        "attn_resolutions=[]", "sampler_steps=5"])
    model = ddpm.DDPM(spec, CPU, "fp32", size=16)
    reported: list[float] = []
    token = SAMPLING_PROGRESS.set(reported.append)
    try:
        model.sample(3, torch.Generator().manual_seed(0))
    finally:
        SAMPLING_PROGRESS.reset(token)
    assert reported == [pytest.approx(1 / 5)] * 4  # after passes 1-4; the 5th ends the call
    inside = []
    sample = model.sample
    model.sample = lambda n, g: (inside.append(SAMPLING_PROGRESS.get()), sample(n, g))[1]
    batches = draw(model, 5, torch.Generator().manual_seed(0), 3, progress=True, desc="sampling")
    assert [len(b) for b in batches] == [3, 2] and len(inside) == 2 and None not in inside  # the bar listens
    assert "0/5 img" in capsys.readouterr().err  # counted in images
    assert SAMPLING_PROGRESS.get() is None  # nothing left set for later sample() calls
    draw(model, 2, torch.Generator().manual_seed(0), 2, progress=False)
    assert inside[-1] is None  # no bar, nothing reported
