"""Distil your own model with frkd.distill.Distiller (docs/distill.md): a pair of networks frkd never
defined, on CPU in well under a minute.

The teacher is a small CNN at stride 4 that returns a dict; the student is a patch-token network at
stride 8 whose feature module emits tokens B×N×C, with other channels. The data are random images of
coloured squares on noise, labelled by colour. The teacher is trained first (plain CE), then frozen
and distilled into the student with the chosen recipe; the student's own CE is added by hand.

    python examples/distill_your_own_model.py --recipe frkd --steps 40
"""
import argparse

import torch
import torch.nn.functional as F
from torch import nn

from frkd.distill import Distiller

NUM_CLASSES = 4  # background + three colours
COLOURS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])


def batch(generator: torch.Generator, size: int = 32, count: int = 8):
    """Images B×3×size×size (a coloured square on noise) and labels B×size×size (0 = background)."""
    images = torch.randn(count, 3, size, size, generator=generator) * 0.5
    labels = torch.zeros(count, size, size, dtype=torch.long)
    for i in range(count):
        colour = int(torch.randint(0, 3, (1,), generator=generator))
        y, x = (int(v) for v in torch.randint(0, size // 2, (2,), generator=generator))
        side = size // 2
        images[i, :, y:y + side, x:x + side] += COLOURS[colour][:, None, None]
        labels[i, y:y + side, x:x + side] = colour + 1
    return images, labels


class CNNTeacher(nn.Module):
    """Stride 4: ``body`` emits B×32×H/4×W/4, ``classify`` the logits; returns {"out": logits}."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.classify = nn.Conv2d(32, NUM_CLASSES, 1)

    def forward(self, x):
        return {"out": self.classify(self.body(x))}


class TokenStudent(nn.Module):
    """Stride 8 patches: ``blocks.mix`` emits tokens B×N×16, ``to_logits`` the logits on the grid."""

    def __init__(self):
        super().__init__()
        self.patches = nn.Conv2d(3, 16, 8, 8)
        self.blocks = nn.ModuleDict({"norm": nn.LayerNorm(16), "mix": nn.Linear(16, 16)})
        self.to_logits = nn.Conv2d(16, NUM_CLASSES, 1)

    def forward(self, x):
        grid = self.patches(x)
        B, C, h, w = grid.shape
        tokens = self.blocks["mix"](self.blocks["norm"](grid.flatten(2).transpose(1, 2)))
        return self.to_logits(F.gelu(tokens).transpose(1, 2).reshape(B, C, h, w))


def ce(logits, labels):
    return F.cross_entropy(F.interpolate(logits, size=labels.shape[-2:], mode="bilinear"), labels)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="frkd", help="a frkd.losses recipe: frkd, kd, fitnet, cwd, ifvd, cirkd ...")
    p.add_argument("--steps", type=int, default=40, help="student steps (the teacher trains twice as many)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)

    teacher = CNNTeacher()
    optimizer = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    for _ in range(2 * args.steps):
        images, labels = batch(g)
        loss = ce(teacher(images)["out"], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    student = TokenStudent()
    distiller = Distiller(student, teacher, args.recipe, num_classes=NUM_CLASSES,
                          student_feature="blocks.mix", teacher_feature="body",
                          student_logits="to_logits", teacher_logits="classify", ignore_index=255)
    optimizer = torch.optim.SGD([*student.parameters(), *distiller.parameters()], lr=0.05, momentum=0.9)
    critic = distiller.discriminator_parameters()
    critic_optimizer = torch.optim.Adam(critic, lr=4e-4) if critic else None
    student.train()
    for step in range(args.steps):
        images, labels = batch(g)
        out = distiller(images, labels)  # teacher (frozen) then student; out.student is the student's logits
        loss = ce(out.student, labels) + out.loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if critic_optimizer is not None:  # recipes with a discriminator train it on the detached maps
            critic_optimizer.zero_grad()
            distiller.discriminator_loss(out).backward()
            critic_optimizer.step()
        if step % 10 == 0 or step == args.steps - 1:
            terms = ", ".join(f"{name} {value.item():.4f}" for name, value in out.terms.items())
            print(f"step {step}: ce {ce(out.student, labels).item():.4f}; {terms}")
    return {name: value.item() for name, value in out.terms.items()}


if __name__ == "__main__":
    main()
