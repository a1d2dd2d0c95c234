"""The models a user can name, in words, apart from their code: this imports no torch, so `bench --help`
lists them in a blink."""

# family: what it is; each family module's HELP says what its keys mean
DESCRIPTIONS = {
    "dcgan": "the seed's DCGAN (Radford et al. 2016): BCE, Adam, z=100",
    "wgan-gp": "DCGAN backbone, Wasserstein loss + gradient penalty (Gulrajani et al. 2017), critic without "
               "BatchNorm, n_critic 5",
    "ddpm": "pixel-space diffusion (Ho et al. 2020): UNet, EMA, DDPM or DDIM sampling",
    "ldm": "latent diffusion (Rombach et al. 2022): KL autoencoder f=4 (64x64x3 -> 16x16x4) trained in the same "
           "run, then a UNet on its latents",
}
# The user's own words: names that stand for a family with a spec file's settings.
ALIASES = {
    "diffusion": ("ldm", "seed-ldm.toml", "the seed report's latent diffusion as it wrote it "
                  "(ldm with experiments/seed-ldm.toml: batch 5, lr 3e-4, 40 epochs)"),
}
