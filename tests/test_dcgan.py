import torch

from benchmark.models.dcgan import DCGAN, DEFAULTS, Discriminator, Generator
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
