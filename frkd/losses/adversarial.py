"""The adversarial holistic term of IFVD/SKD as CIRKD trains it: a SAGAN-style discriminator on the
logits, a generator term for the student and a discriminator loss for its own optimizer.

Discriminator (CIRKD ``utils/sagan.py``, ``preprocess_GAN_mode=1``): BatchNorm over the K logit
channels, four spectral-normalised 4×4 stride-2 convs (64, 128, 256, 512 channels, LeakyReLU 0.1;
``d_width`` sets the first, 64 as CIRKD; the synthetic benchmark's networks are 8× narrower, so is its D),
self-attention after the third and the fourth, and a 4×4 conv to one channel. It needs logits of at
least 64×64 (stride 8 of a 512 crop); smaller logits are upsampled bilinearly to 64 on that side
first (toy crops only; CIRKD's crops are 512×1024 and 512×512).

Losses (λ_adv·G, λ_d·D), with D(·) averaged over its output map:
- hinge (CIRKD ``train_kd.py``): G = −mean D(Z_S); D = mean relu(1 − D(Z_T)) + mean relu(1 + D(Z_S)).
- wgan-gp (IFVD): G = −mean D(Z_S); D = −mean D(Z_T) + mean D(Z_S) + λ_gp·mean_b (‖∇D(x̂_b)‖₂ − 1)²,
  x̂ = a·Z_T + (1 − a)·Z_S with a ~ U(0, 1) per image.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from .base import DistillationLoss, check_same_grid

ADV_TYPES = ("hinge", "wgan-gp")
MIN_SIDE = 64  # 4 halvings then a 4×4 conv


class SelfAttention(nn.Module):
    """SAGAN self-attention: x + γ·V·softmax(QᵀK)ᵀ, Q and K with C/8 channels, γ starts at 0. x: B×C×H×W."""

    def __init__(self, channels: int):
        super().__init__()
        self.query = nn.Conv2d(channels, channels // 8, 1)
        self.key = nn.Conv2d(channels, channels // 8, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # B×N×C/8
        attention = torch.softmax(torch.bmm(q, self.key(x).flatten(2)), dim=-1)  # B×N×N
        out = torch.bmm(self.value(x).flatten(2), attention.transpose(1, 2)).view(B, C, H, W)
        return self.gamma * out + x


class Discriminator(nn.Module):
    """Logits B×K×H×W -> critic map B×1×h×w (h = H/16 − 3 for H ≥ 64)."""

    def __init__(self, num_classes: int, width: int = 64):
        super().__init__()
        self.preprocess = nn.BatchNorm2d(num_classes)
        layers, channels = [], num_classes
        for i in range(4):
            layers += [spectral_norm(nn.Conv2d(channels, width << i, 4, 2, 1)), nn.LeakyReLU(0.1)]
            if i >= 2:
                layers.append(SelfAttention(width << i))
            channels = width << i
        self.body = nn.Sequential(*layers)
        self.last = nn.Conv2d(channels, 1, 4)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        H, W = z.shape[-2:]
        if min(H, W) < MIN_SIDE:
            z = F.interpolate(z, size=(max(H, MIN_SIDE), max(W, MIN_SIDE)), mode="bilinear", align_corners=False)
        return self.last(self.body(self.preprocess(z)))


class Adversarial(DistillationLoss):
    """``adv``: λ_adv·(−mean D(Z_S)), the student's (generator's) term. The discriminator's own loss,
    ×λ_d, is ``discriminator_loss``; its parameters are ``discriminator_parameters()``."""

    def __init__(self, *, lambda_adv: float, lambda_d: float, adv_type: str, lambda_gp: float, d_width: int = 64,
                 **common):
        super().__init__(**common)
        if adv_type not in ADV_TYPES:
            raise ValueError(f"adv_type must be one of {', '.join(ADV_TYPES)}, got {adv_type!r}")
        if not isinstance(d_width, int) or d_width < 8:
            raise ValueError(f"--d-width must be an integer >= 8 (self-attention keeps width/8 channels), got {d_width!r}")
        self.lambda_adv, self.lambda_d, self.adv_type, self.lambda_gp = lambda_adv, lambda_d, adv_type, lambda_gp
        self.discriminator = Discriminator(self.num_classes, d_width)

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        if self.lambda_adv == 0:
            return {}
        check_same_grid(student_logits=student.logits, teacher_logits=teacher.logits)
        # the student's gradient flows through D to Z_S; D's own parameters collect none here
        frozen = [p for p in self.discriminator.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            critic = self.discriminator(student.logits.float())
        finally:
            for p in frozen:
                p.requires_grad_(True)
        return {"adv": -self.lambda_adv * critic.mean()}

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.discriminator.parameters() if p.requires_grad]

    def discriminator_loss(self, student, teacher) -> torch.Tensor:
        """λ_d × D's loss on detached logits (student = fake, teacher = real)."""
        z_s, z_t = student.logits.detach().float(), teacher.logits.detach().float()
        fake, real = self.discriminator(z_s), self.discriminator(z_t)
        if self.adv_type == "hinge":
            loss = F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
        else:
            loss = fake.mean() - real.mean() + self.lambda_gp * self._gradient_penalty(z_s, z_t)
        return self.lambda_d * loss

    def _gradient_penalty(self, z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        a = torch.rand(z_s.shape[0], 1, 1, 1, device=z_s.device)
        mixed = (a * z_t + (1 - a) * z_s).requires_grad_(True)
        grad, = torch.autograd.grad(self.discriminator(mixed).sum(), mixed, create_graph=True)
        return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
