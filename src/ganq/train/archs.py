"""The study's architectures (fc4, cnn5, cnn3) and a standard DCGAN, each built from a GeneratorSpec.

Discriminators output one logit per image; generators end in tanh, giving images in [-1, 1].
BatchNorm1d sits right after the Linear layers (before any reshape) so that `quantize --fold-bn` can fold it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ganq.errors import GanqError
from ganq.registry import Registry
from ganq.spec import GeneratorSpec
from ganq.train import families


class Reshape(nn.Module):
    """x.view(-1, *shape): exports as one Reshape node (nn.Unflatten exports a chain of shape arithmetic)."""

    def __init__(self, *shape: int):
        super().__init__()
        self.shape = shape

    def forward(self, x):
        return x.reshape(-1, *self.shape)


class Generator(nn.Module):
    def __init__(self, spec: GeneratorSpec, body: nn.Module):
        super().__init__()
        self.image_shape = spec.image_shape
        self.body = body

    def forward(self, z):
        return self.body(z).reshape(-1, *self.image_shape)


def _fc4(spec: GeneratorSpec, dropout: float):
    n = spec.channels * spec.height * spec.width
    # BatchNorm on the hidden layers: without it this FC generator collapsed onto a few noisy digits here
    g = nn.Sequential(
        nn.Linear(spec.latent_dim, 256), nn.LeakyReLU(0.2),
        nn.Linear(256, 512), nn.BatchNorm1d(512), nn.LeakyReLU(0.2),
        nn.Linear(512, 1024), nn.BatchNorm1d(1024), nn.LeakyReLU(0.2),
        nn.Linear(1024, n), nn.Tanh())
    d = nn.Sequential(
        nn.Flatten(),
        nn.Linear(n, 1024), nn.LeakyReLU(0.2), nn.Dropout(dropout),
        nn.Linear(1024, 512), nn.LeakyReLU(0.2), nn.Dropout(dropout),
        nn.Linear(512, 256), nn.LeakyReLU(0.2), nn.Dropout(dropout),
        nn.Linear(256, 1))
    return g, d


def _cnn5(spec: GeneratorSpec, dropout: float):
    c = spec.channels
    g = nn.Sequential(  # 5 weight layers: Linear, 2 ConvTranspose, 2 Conv
        nn.Linear(spec.latent_dim, 128 * 7 * 7, bias=False), nn.BatchNorm1d(128 * 7 * 7), nn.ReLU(),
        Reshape(128, 7, 7),
        nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),     # 14
        nn.ConvTranspose2d(64, 32, 4, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),      # 28
        nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, c, 3, 1, 1), nn.Tanh())
    d = nn.Sequential(  # 5 weight layers
        nn.Conv2d(c, 32, 4, 2, 1), nn.LeakyReLU(0.2),                                         # 14
        nn.Conv2d(32, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.LeakyReLU(0.2),                    # 7
        nn.Conv2d(64, 128, 3, 2, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),                  # 4
        nn.Conv2d(128, 128, 3, 1, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(128 * 4 * 4, 1))
    return g, d


def _cnn3(spec: GeneratorSpec, dropout: float):
    c, s = spec.channels, spec.height // 4
    g = nn.Sequential(  # 3 convolution layers after the projection
        nn.Linear(spec.latent_dim, 128 * s * s, bias=False), nn.BatchNorm1d(128 * s * s), nn.ReLU(),
        Reshape(128, s, s),
        nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.ConvTranspose2d(64, 32, 4, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, c, 3, 1, 1), nn.Tanh())
    return g, cnn3_discriminator(spec, dropout)


def cnn3_discriminator(spec: GeneratorSpec, dropout: float) -> nn.Module:
    c, s = spec.channels, spec.height // 4
    return nn.Sequential(
        nn.Conv2d(c, 32, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(32, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.LeakyReLU(0.2),
        nn.Conv2d(64, 128, 3, 1, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(128 * s * s, 1))


def _dcgan(spec: GeneratorSpec, dropout: float, ngf: int = 64, ndf: int = 64):
    c = spec.channels
    g = nn.Sequential(
        Reshape(spec.latent_dim, 1, 1),
        nn.ConvTranspose2d(spec.latent_dim, ngf * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(),  # 4
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(),        # 8
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(),                # 16
        nn.ConvTranspose2d(ngf, c, 4, 2, 1, bias=False), nn.Tanh())                                          # 32
    d = nn.Sequential(
        nn.Conv2d(c, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2),
        nn.Dropout(dropout), nn.Conv2d(ndf * 4, 1, 4, 1, 0, bias=False), nn.Flatten())
    return g, d


def _dcgan_init(module: nn.Module) -> None:
    # DCGAN's N(0, 0.02) initialisation; it is what makes the plain DCGAN recipe train.
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.affine:  # cgan-bn's carry no affine map
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


@dataclass(frozen=True)
class Arch:
    name: str
    description: str
    fits: Callable[[GeneratorSpec], bool]
    shapes: str
    build_fn: Callable
    family: str = "unconditional"  # a key of ganq.train.families.FAMILIES
    parity_tol: float = 1e-5  # export's bound on |onnxruntime - PyTorch|


ARCHS: Registry[Arch] = Registry("architecture")


def register(arch: Arch) -> None:
    ARCHS.register(arch.name, arch)


register(Arch("fc4", "4 Linear layers per network (the study's MNIST FC GAN)",
              lambda s: (s.height, s.width) == (28, 28), "28x28", _fc4))
register(Arch("cnn5", "5 layers per network (the study's MNIST CNN GAN)",
              lambda s: (s.height, s.width) == (28, 28), "28x28", _cnn5))
register(Arch("cnn3", "3 convolution layers (the study's Fashion-MNIST and CIFAR-10 CNN)",
              lambda s: s.height == s.width and s.height in (28, 32), "28x28 or 32x32", _cnn3))
register(Arch("dcgan", "standard DCGAN (Radford et al. 2016), 4 transposed convolutions",
              lambda s: (s.height, s.width) == (32, 32), "32x32", _dcgan))
register(Arch("cgan", "class-conditional cnn3: label embedding + z, projection discriminator",
              lambda s: s.height == s.width and s.height in (28, 32), "28x28 or 32x32", families._cgan,
              "conditional"))
register(Arch("cgan-bn", "class-conditional cnn3: the label through conditional BatchNorm, projection discriminator",
              lambda s: s.height == s.width and s.height in (28, 32), "28x28 or 32x32", families._cgan_bn,
              "conditional"))
register(Arch("style", "small StyleGAN2: mapping MLP, modulated convolution, noise inputs, R1",
              lambda s: s.height == s.width and s.height in (16, 32, 64), "16x16, 32x32 or 64x64 (--image-size 32)",
              families._style, "style", parity_tol=1e-4))  # 4 mapping layers + 7 demodulated convs: float32
              # reassociation alone reaches 1-2e-5 on [-1, 1] images
register(Arch("sr2x", "2x super-resolution: residual trunk, PixelShuffle; L1 + adversarial loss",
              lambda s: s.height % 2 == 0 and s.width % 2 == 0 and s.height >= 8, "even sides >= 8",
              families._sr2x, "image-to-image"))


def check_fits(arch: str, spec: GeneratorSpec) -> Arch:
    a = ARCHS.get(arch)
    if not a.fits(spec):
        raise GanqError(f"architecture {arch} takes {a.shapes} images, but {spec.dataset or 'the data'} has "
                        f"{spec.channels}x{spec.height}x{spec.width}")
    return a


def family_of(arch: str) -> "families.Family":
    return families.FAMILIES[ARCHS.get(arch).family]


def build(spec: GeneratorSpec, dropout: float = 0.0, aux: bool = False) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) for spec.arch, initialised as its family does: DCGAN's N(0, 0.02) for the
    DCGAN-style ones (fc4 keeps PyTorch's default), the equalized-learning-rate N(0, 1) for style, PyTorch's default
    for sr2x."""
    a = check_fits(spec.arch, spec)
    if a.family != "unconditional":
        labels = spec.inputs_of("label")
        kw = {"aux": True} if aux else {}
        g, d = a.build_fn(spec, dropout, classes=labels[0].classes if labels else 0, **kw)
        if a.family == "conditional":
            g.apply(_dcgan_init)
            d.apply(_dcgan_init)
            d.init_projection()
            if hasattr(g, "init_conditioning"):  # conditional BatchNorm starts as the identity (gain 1, bias 0)
                g.init_conditioning()
        return g, d
    g_body, d = a.build_fn(spec, dropout)
    g = Generator(spec, g_body)
    if a.name != "fc4":  # the FC GAN trains from PyTorch's default initialisation
        g.apply(_dcgan_init)
        d.apply(_dcgan_init)
    return g, d
