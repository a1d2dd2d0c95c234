import pytest
import torch
import torch.nn.functional as F

from benchmark.models.dcgan import DCGAN, DEFAULTS, Discriminator, Generator, bce
from benchmark.spec import build_spec


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_seed_architecture_parameter_counts():
    assert n_params(Generator(100, 64)) == 3_576_704
    assert n_params(Discriminator(64)) == 2_765_568
    g, d = Generator(), Discriminator()
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in g.modules()) == 5
    assert sum(isinstance(m, torch.nn.Conv2d) for m in d.modules()) == 5
    assert isinstance(d.main[1], torch.nn.LeakyReLU)  # no BatchNorm on D's first layer
    assert isinstance(d.main[-1], torch.nn.Sigmoid) and isinstance(g.main[-1], torch.nn.Tanh)


def test_the_loss_keeps_g_learning_when_d_rejects_its_fakes():
    """The seed's BCE on D's probabilities clamps them at 1e-12 in the gradient: at a logit of -35 G's gradient
    is 1,600 times too small. From the logits it stays -1, and the loss is the seed's wherever nothing clamps."""
    for logit in (-10.0, -35.0, -80.0):
        x = torch.tensor([logit], requires_grad=True)
        bce(x, torch.ones(1)).backward()
        assert x.grad.item() == pytest.approx(-1.0, abs=1e-4), logit
    x = torch.linspace(-8, 8, 17)
    for target in (torch.zeros(17), torch.ones(17)):
        seed_loss = F.binary_cross_entropy(torch.sigmoid(x), target)
        assert bce(x, target).item() == pytest.approx(seed_loss.item(), rel=1e-5)
    model = DCGAN(build_spec("dcgan", DEFAULTS, overrides=["ngf=8", "ndf=8"]), torch.device("cpu"), "bf16")
    assert isinstance(model.D.main[-1], torch.nn.Conv2d)  # D gives logits; the sigmoid is in the loss
    assert bce(model.D(torch.rand(2, 3, 64, 64)), torch.ones(2)).dtype == torch.float32  # fp32 under bf16 nets


def test_train_step_sample_and_state_roundtrip():
    spec = build_spec("dcgan", DEFAULTS, overrides=["ngf=8", "ndf=8"])
    model = DCGAN(spec, torch.device("cpu"), "fp32")
    real = torch.rand(4, 3, 64, 64) * 2 - 1
    losses = model.train_step(real)
    assert set(losses) == {"loss_d", "loss_g", "d_x", "d_g_z"}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    images = model.sample(5, torch.Generator().manual_seed(0))
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 64, 64)
    again = DCGAN(spec, torch.device("cpu"), "fp32")
    again.load_state_dict(model.state_dict())
    assert torch.equal(again.sample(5, torch.Generator().manual_seed(0)), images)
    assert model.flops_per_train_image() > 3 * model.flops_per_sample() > 0
    # counting FLOPs leaves the model untouched (BatchNorm running statistics included)
    assert torch.equal(model.sample(5, torch.Generator().manual_seed(0)), images)


def _state(model):
    import copy

    return copy.deepcopy({**model.state_dict(), "rng": torch.get_rng_state()})


def _equal(a, b):
    if isinstance(a, dict):
        return set(a) == set(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_standing_statistics_sample_g_and_leave_training_untouched():
    """Early in training the running averages make flat grey tiles; standing statistics (the default) sample
    what G makes in train mode, and computing them changes nothing of training: G's weights and running
    statistics, Adam's moments, the noise stream and the global RNG, hence the next training step."""
    spec = build_spec("dcgan", DEFAULTS, overrides=["ngf=16", "ndf=16"])
    assert spec.eval["bn"] == "standing"
    model, twin = DCGAN(spec, torch.device("cpu"), "fp32"), DCGAN(spec, torch.device("cpu"), "fp32")
    real = torch.rand(16, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for _ in range(6):
        model.train_step(real)
    before = _state(model)
    twin.load_state_dict(_state(model))  # a copy: Adam's load_state_dict would share the moment tensors
    stds = {}
    for mode in ("standing", "batch", "running"):
        model.bn = mode
        stds[mode] = model.sample(32, torch.Generator().manual_seed(0)).float().std(dim=(1, 2, 3)).mean().item()
        assert _equal(before, _state(model)), mode
    assert stds["running"] < 4 < stds["batch"] / 2, stds  # grey tiles (< 4/255) against G's real output
    assert abs(stds["standing"] - stds["batch"]) < 0.2 * stds["batch"], stds
    torch.set_rng_state(before["rng"])
    after_sampling = model.train_step(real)
    torch.set_rng_state(before["rng"])
    assert after_sampling == twin.train_step(real)
    assert _equal(_state(model), _state(twin))


def test_wgan_gp_penalty_against_analytic_critics():
    """For a linear critic D(x) = <w, x> the gradient is w at every interpolate: penalty (||w|| - 1)^2. For
    D(x) = ||x||^2 / 2 it is x_hat itself, so the penalty follows from the alphas the noise stream draws."""
    from benchmark.models.wgan_gp import DEFAULTS as WGAN_DEFAULTS
    from benchmark.models.wgan_gp import WGANGP

    spec = build_spec("wgan-gp", WGAN_DEFAULTS, overrides=["ngf=8", "ndf=8"])
    model = WGANGP(spec, torch.device("cpu"), "fp32")
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.randn(4, 3, 64, 64, generator=gen), torch.randn(4, 3, 64, 64, generator=gen)
    w = torch.randn(3, 64, 64, generator=gen) * 0.01

    class Linear(torch.nn.Module):
        def forward(self, x):
            return (x * w).flatten(1).sum(1)

    class Quadratic(torch.nn.Module):
        def forward(self, x):
            return 0.5 * (x**2).flatten(1).sum(1)

    model.D = Linear()
    assert model._penalty(real, fake).item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-5)
    model.D = Quadratic()
    state = model.noise.get_state()
    alpha = torch.rand(4, 1, 1, 1, generator=model.noise)
    model.noise.set_state(state)
    x_hat = alpha * real + (1 - alpha) * fake
    expected = ((x_hat.flatten(1).norm(dim=1) - 1) ** 2).mean().item()
    assert model._penalty(real, fake).item() == pytest.approx(expected, rel=1e-5)


def test_precision_auto_picks_bf16_only_where_it_is_fast():
    from benchmark import device as common

    assert common.cpu_has_fast_bf16("flags : fpu avx2 avx512f avx512_bf16") is True
    assert common.cpu_has_fast_bf16("flags : fpu avx2 amx_bf16 amx_tile") is True
    assert common.cpu_has_fast_bf16("flags : fpu sse4_2 avx2 avx512f") is False
    cpu = torch.device("cpu")
    here = common.cpu_has_fast_bf16(open("/proc/cpuinfo").read())
    assert common.resolve_precision("auto", cpu) == ("bf16" if here else "fp32")
    assert common.resolve_precision("fp32", cpu) == "fp32" and common.resolve_precision("bf16", cpu) == "bf16"
