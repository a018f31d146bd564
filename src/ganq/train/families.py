"""The generator families `ganq train` knows beyond the unconditional one: what each one's generator takes, how its
discriminator is conditioned, and the extra loss terms of its recipe.

    unconditional  z -> image                       (fc4, cnn5, cnn3, dcgan)
    conditional    z, label -> image                (cgan: label embedding concatenated with z; cgan-bn: the label
                                                     through conditional BatchNorm, a per-class gain and bias after
                                                     every normalisation, as BigGAN; projection discriminator,
                                                     Miyato & Koyama 2018)
    style          z, noise0..noiseK -> image       (style: StyleGAN2-like mapping MLP, modulated / demodulated
                                                     convolution, per-layer noise, equalized learning rate, skip
                                                     toRGB outputs; lazy R1 penalty on the real images)
    image-to-image image_lr -> image (2x)           (sr2x: SRGAN/ESRGAN-like residual trunk, PixelShuffle; L1
                                                     pixel loss + a small adversarial term)

A Family turns one training batch (real images, their labels and their low-resolution copies) and a random stream
into the generator's arguments and the discriminator's conditions; the loop in ganq.train.loop is the same for all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ganq.spec import GeneratorSpec, InputSpec


# --- the per-family behaviour -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    """name; spec(): the GeneratorSpec's inputs; noise(): the random part of a step's generator inputs (drawn for the
    whole step, so that DDP processes slice the same draw); g_args(): the generator's arguments; cond(): what the
    discriminator is told about images (labels, or None)."""

    name: str
    adv_weight: float = 1.0   # the adversarial term's weight in the generator loss
    pixel_weight: float = 0.0  # L1 to the real image (image-to-image)
    r1: float = 0.0           # R1 penalty gamma (lazy, every R1_EVERY steps)

    def inputs(self, spec: GeneratorSpec, classes: int) -> tuple:
        if self.name == "unconditional":
            return ()
        z = InputSpec("z", "latent", (spec.latent_dim,), prior=spec.latent)
        if self.name == "conditional":
            return (z, InputSpec("label", "label", (), classes=classes))
        if self.name == "style":
            return (z, *(InputSpec(f"noise{k}", "noise", (1, r, r)) for k, r in enumerate(style_resolutions(spec))))
        c, h, w = spec.image_shape
        return (InputSpec("image_lr", "image", (c, h // 2, w // 2), source=spec.dataset),)

    def noise(self, spec: GeneratorSpec, n: int, gen: torch.Generator | None, classes: int) -> list[torch.Tensor]:
        from ganq.train.loop import latents

        if self.name == "image-to-image":
            return []
        out = [latents(n, spec.latent_dim, spec.latent, gen)]
        if self.name == "conditional":
            out.append(torch.randint(0, classes, (n,), generator=gen))
        elif self.name == "style":
            out += [torch.randn(n, 1, r, r, generator=gen) for r in style_resolutions(spec)]
        return out

    def g_args(self, noise: list, lowres: torch.Tensor | None) -> tuple:
        return (lowres,) if self.name == "image-to-image" else tuple(noise)

    def fake_cond(self, noise: list):
        return noise[1] if self.name == "conditional" else None

    def real_cond(self, labels: torch.Tensor):
        return labels if self.name == "conditional" else None

    @property
    def needs_lowres(self) -> bool:
        return self.name == "image-to-image"

    @property
    def needs_labels(self) -> bool:
        return self.name == "conditional"


FAMILIES = {
    "unconditional": Family("unconditional"),
    "conditional": Family("conditional"),
    "style": Family("style", r1=0.1),
    "image-to-image": Family("image-to-image", adv_weight=5e-3, pixel_weight=1.0),
}
R1_EVERY = 4


def disc(d: nn.Module, x: torch.Tensor, cond) -> torch.Tensor:
    """The discriminator's logits [N] (a projection discriminator takes the labels too)."""
    return (d(x) if cond is None else d(x, cond)).view(-1)


def r1_penalty(d: nn.Module, real: torch.Tensor, cond) -> torch.Tensor:
    """gamma/2 E ||grad_x D(x)||^2 on real images (Mescheder et al. 2018), without the gamma."""
    real = real.detach().requires_grad_(True)
    out = disc(d, real, cond)
    (grad,) = torch.autograd.grad(out.sum(), real, create_graph=True)
    return 0.5 * grad.pow(2).flatten(1).sum(1).mean()


# --- conditional: cgan ----------------------------------------------------------------------------------------------

class CondGenerator(nn.Module):
    """(z, label) -> image: the label's embedding concatenated with z, then cnn3's projection and upsampling."""

    def __init__(self, spec: GeneratorSpec, classes: int, emb: int = 32):
        super().__init__()
        c, s = spec.channels, spec.height // 4
        self.s = s
        self.embed = nn.Embedding(classes, emb)
        self.fc = nn.Linear(spec.latent_dim + emb, 128 * s * s, bias=False)
        self.bn = nn.BatchNorm1d(128 * s * s)
        self.up = nn.Sequential(
            nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, c, 3, 1, 1), nn.Tanh())

    def forward(self, z, label):
        h = torch.relu(self.bn(self.fc(torch.cat([z, self.embed(label)], 1))))
        return self.up(h.reshape(-1, 128, self.s, self.s))


class ConditionalBatchNorm(nn.Module):
    """BatchNorm without its own affine map, then the label's gain and bias (1 + gamma[y], beta[y]): the conditioning
    of the projection paper's generator and BigGAN (there from a shared embedding; here one table per layer)."""

    def __init__(self, features: int, classes: int, dims: int):
        super().__init__()
        self.bn = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(features, affine=False)
        self.gamma = nn.Embedding(classes, features)
        self.beta = nn.Embedding(classes, features)
        self.shape = (-1, features) if dims == 1 else (-1, features, 1, 1)

    def init_identity(self) -> None:
        nn.init.zeros_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x, label):
        return self.bn(x) * (1 + self.gamma(label).view(self.shape)) + self.beta(label).view(self.shape)


class CondBNGenerator(nn.Module):
    """(z, label) -> image: cnn3's layers, the label entering through every BatchNorm (ConditionalBatchNorm)
    rather than once beside z, so no layer can ignore it."""

    def __init__(self, spec: GeneratorSpec, classes: int):
        super().__init__()
        c, s = spec.channels, spec.height // 4
        self.s = s
        self.fc = nn.Linear(spec.latent_dim, 128 * s * s, bias=False)
        self.bn0 = ConditionalBatchNorm(128 * s * s, classes, 1)
        self.up1 = nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False)
        self.bn1 = ConditionalBatchNorm(64, classes, 2)
        self.up2 = nn.ConvTranspose2d(64, 32, 4, 2, 1, bias=False)
        self.bn2 = ConditionalBatchNorm(32, classes, 2)
        self.out = nn.Conv2d(32, c, 3, 1, 1)

    def init_conditioning(self) -> None:
        for bn in (self.bn0, self.bn1, self.bn2):
            bn.init_identity()

    def forward(self, z, label):
        h = torch.relu(self.bn0(self.fc(z), label)).reshape(-1, 128, self.s, self.s)
        h = torch.relu(self.bn1(self.up1(h), label))
        h = torch.relu(self.bn2(self.up2(h), label))
        return torch.tanh(self.out(h))


class ProjectionDiscriminator(nn.Module):
    """cnn3's discriminator trunk; logit = linear(h) + <embed(y), h> (the projection of Miyato & Koyama)."""

    def __init__(self, spec: GeneratorSpec, classes: int, dropout: float, aux: bool = False):
        from ganq.train.archs import cnn3_discriminator

        super().__init__()
        d = cnn3_discriminator(spec, dropout)
        self.trunk, self.linear = d[:-1], d[-1]
        self.embed = nn.Embedding(classes, self.linear.in_features)
        if aux:  # AC-GAN's auxiliary classifier on the same features (train --aux)
            self.aux = nn.Linear(self.linear.in_features, classes)

    def classify(self, x):
        return self.aux(self.trunk(x))

    def init_projection(self) -> None:
        nn.init.normal_(self.embed.weight, 0.0, 0.02)  # N(0, 1) would make the projection dwarf the logit

    def forward(self, x, y):
        h = self.trunk(x)
        return self.linear(h).view(-1) + (self.embed(y) * h).sum(1)


def _cgan(spec: GeneratorSpec, dropout: float, classes: int = 10, aux: bool = False):
    return CondGenerator(spec, classes or 10), ProjectionDiscriminator(spec, classes or 10, dropout, aux)


def _cgan_bn(spec: GeneratorSpec, dropout: float, classes: int = 10, aux: bool = False):
    return CondBNGenerator(spec, classes or 10), ProjectionDiscriminator(spec, classes or 10, dropout, aux)


# --- style-based: style -----------------------------------------------------------------------------------------------

def style_resolutions(spec: GeneratorSpec) -> list[int]:
    """The resolution of each modulated 3x3 convolution (one noise input each): 4, then two per doubling."""
    res, r = [4], 4
    while r < spec.height:
        r *= 2
        res += [r, r]
    return res


class EqualLinear(nn.Module):
    """A Linear with the equalized learning rate (weights N(0, 1) / lr_mul, scaled by lr_mul / sqrt(fan_in) at run
    time)."""

    def __init__(self, i, o, bias_init=0.0, lr_mul=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(o, i) / lr_mul)
        self.bias = nn.Parameter(torch.full((o,), float(bias_init)))
        self.scale, self.lr_mul = lr_mul / math.sqrt(i), lr_mul

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class ModConv(nn.Module):
    """StyleGAN2's modulated convolution, in its unfused form: the input scaled by the style s (per sample and
    input channel), a plain convolution with the equalized weight, the output demodulated by
    1 / sqrt(sum_{i,k} (w s_i)^2): the same function as the fused grouped-conv form, with the weight on a Conv."""

    def __init__(self, i, o, k, w_dim, demod=True, up=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(o, i, k, k))
        self.bias = nn.Parameter(torch.zeros(o))
        self.scale = 1 / math.sqrt(i * k * k)
        self.affine = EqualLinear(w_dim, i, bias_init=1.0)
        self.demod, self.up, self.pad = demod, up, k // 2

    def forward(self, x, w):
        s = self.affine(w)
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        weight = self.weight * self.scale
        out = F.conv2d(x * s[:, :, None, None], weight, padding=self.pad)
        if self.demod:
            d = torch.rsqrt((s * s) @ weight.pow(2).sum([2, 3]).t() + 1e-8)  # [N, O]
            out = out * d[:, :, None, None]
        return out + self.bias[None, :, None, None]


class StyleGenerator(nn.Module):
    """z -> normalised -> mapping MLP (lr x0.01) -> w; a learned 4x4 constant; modulated 3x3 convolutions with noise
    (learned strength) and leaky ReLU (gain sqrt 2), two per resolution, bilinear upsampling; toRGB (modulated 1x1,
    no demodulation) at every resolution, summed upwards (StyleGAN2's skip generator); tanh last, so that the
    images stay in the spec's [-1, 1]."""

    def __init__(self, spec: GeneratorSpec, w_dim: int = 64, mapping_layers: int = 4):
        super().__init__()
        res = style_resolutions(spec)
        width = {4: 64, 8: 64, 16: 32, 32: 16, 64: 8}  # small: a CPU trains it at ~150 images/s
        layers, dim = [], spec.latent_dim
        for _ in range(mapping_layers):
            layers += [EqualLinear(dim, w_dim, lr_mul=0.01), nn.LeakyReLU(0.2)]
            dim = w_dim
        self.mapping = nn.Sequential(*layers)
        self.const = nn.Parameter(torch.randn(1, width[4], 4, 4))
        self.convs, self.rgbs = nn.ModuleList(), nn.ModuleList()
        prev = width[4]
        for k, r in enumerate(res):
            up = k > 0 and res[k - 1] != r
            self.convs.append(ModConv(prev, width[r], 3, w_dim, up=up))
            prev = width[r]
            if k == len(res) - 1 or res[k + 1] != r:
                self.rgbs.append(ModConv(prev, spec.channels, 1, w_dim, demod=False))
        self.noise_strength = nn.Parameter(torch.zeros(len(res)))
        self.res = res

    def forward(self, z, *noise):
        w = self.mapping(z * torch.rsqrt((z * z).mean(1, keepdim=True) + 1e-8))
        x = self.const.expand(z.shape[0], -1, -1, -1)
        rgb, j = None, 0
        for k, conv in enumerate(self.convs):
            x = F.leaky_relu(conv(x, w) + self.noise_strength[k] * noise[k], 0.2) * math.sqrt(2)
            if k == len(self.convs) - 1 or self.res[k + 1] != self.res[k]:
                y = self.rgbs[j](x, w)
                rgb = y if rgb is None else y + F.interpolate(rgb, scale_factor=2.0, mode="bilinear",
                                                               align_corners=False)
                j += 1
        return torch.tanh(rgb)


class EqualConv(nn.Module):
    def __init__(self, i, o, k, stride=1, pad=0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(o, i, k, k))
        self.bias = nn.Parameter(torch.zeros(o))
        self.scale, self.stride, self.pad = 1 / math.sqrt(i * k * k), stride, pad

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, self.stride, self.pad)


class StyleDiscriminator(nn.Module):
    """StyleGAN2's residual discriminator, small: fromRGB, residual blocks halving to 4x4, minibatch standard
    deviation, a 3x3 conv and two equalized Linears."""

    def __init__(self, spec: GeneratorSpec, dropout: float):
        super().__init__()
        width = {64: 8, 32: 16, 16: 32, 8: 64, 4: 64}
        r = spec.height
        self.from_rgb = EqualConv(spec.channels, width[r], 1)
        blocks = []
        while r > 4:
            blocks.append(_DBlock(width[r], width[r // 2]))
            r //= 2
        self.blocks = nn.Sequential(*blocks)
        self.conv = EqualConv(width[4] + 1, width[4], 3, pad=1)
        self.fc = EqualLinear(width[4] * 16, width[4])
        self.drop = nn.Dropout(dropout)
        self.out = EqualLinear(width[4], 1)

    def forward(self, x):
        h = self.blocks(F.leaky_relu(self.from_rgb(x), 0.2))
        g = min(4, h.shape[0])
        n = h.shape[0] // g * g
        sd = h[:n].reshape(g, -1, *h.shape[1:]).std(0, unbiased=False).mean([1, 2, 3])  # [N/g]
        sd = sd.repeat(g)
        if n < h.shape[0]:
            sd = torch.cat([sd, sd[: h.shape[0] - n]])
        h = torch.cat([h, sd.view(-1, 1, 1, 1).expand(-1, 1, *h.shape[2:])], 1)
        h = F.leaky_relu(self.conv(h), 0.2)
        h = F.leaky_relu(self.fc(h.flatten(1)), 0.2)
        return self.out(self.drop(h))


class _DBlock(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.c1, self.c2 = EqualConv(i, i, 3, pad=1), EqualConv(i, o, 3, pad=1)
        self.skip = EqualConv(i, o, 1)

    def forward(self, x):
        h = F.leaky_relu(self.c1(x), 0.2)
        h = F.avg_pool2d(F.leaky_relu(self.c2(h), 0.2), 2)
        return (h + F.avg_pool2d(self.skip(x), 2)) / math.sqrt(2)


def _style(spec: GeneratorSpec, dropout: float, classes: int = 0):
    return StyleGenerator(spec), StyleDiscriminator(spec, dropout)


# --- image-to-image: sr2x -------------------------------------------------------------------------------------------

class ResidualBlock(nn.Module):
    """EDSR/SRGAN's residual block without BatchNorm: conv, PReLU-free leaky ReLU, conv, scaled skip."""

    def __init__(self, f: int, res_scale: float = 0.2):
        super().__init__()
        self.c1, self.c2, self.res_scale = nn.Conv2d(f, f, 3, 1, 1), nn.Conv2d(f, f, 3, 1, 1), res_scale

    def forward(self, x):
        return x + self.res_scale * self.c2(F.leaky_relu(self.c1(x), 0.2))


class SRGenerator(nn.Module):
    """image_lr [N, C, H/2, W/2] in [-1, 1] -> image [N, C, H, W]: a first conv, residual blocks with a long skip,
    PixelShuffle 2x (ESPCN), two convs; the output is the nearest upsampling of the input plus the learned residual,
    clipped to [-1, 1] (a Clip, not tanh: the data sets' flat black backgrounds are exactly -1)."""

    def __init__(self, spec: GeneratorSpec, f: int = 32, blocks: int = 4):
        super().__init__()
        c = spec.channels
        self.first = nn.Conv2d(c, f, 3, 1, 1)
        self.trunk = nn.Sequential(*[ResidualBlock(f) for _ in range(blocks)], nn.Conv2d(f, f, 3, 1, 1))
        self.up = nn.Conv2d(f, 4 * f, 3, 1, 1)
        self.hr = nn.Conv2d(f, f, 3, 1, 1)
        self.last = nn.Conv2d(f, c, 3, 1, 1)

    def forward(self, image_lr):
        h = self.first(image_lr)
        h = h + self.trunk(h)
        h = F.leaky_relu(F.pixel_shuffle(self.up(h), 2), 0.2)
        res = self.last(F.leaky_relu(self.hr(h), 0.2))
        base = F.interpolate(image_lr, scale_factor=2.0, mode="nearest")
        return torch.clamp(base + res, -1.0, 1.0)


def _sr2x(spec: GeneratorSpec, dropout: float, classes: int = 0):
    from ganq.train.archs import cnn3_discriminator

    c, h, w = spec.image_shape
    if h == w and h in (28, 32):
        d = cnn3_discriminator(spec, dropout)
    else:
        d = nn.Sequential(nn.Conv2d(c, 32, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(32, 64, 4, 2, 1),
                          nn.LeakyReLU(0.2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                          nn.Linear(64, 1))
    return SRGenerator(spec), d
