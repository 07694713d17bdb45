"""torchrun entry for tests/test_ddp.py: frkd.train, and each rank saves its discriminator's parameters to
<out-dir>/critic_rank<r>.pt after the student phase (its BatchNorm statistics stay per rank, like the student's
on CPU)."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from frkd import engine, train  # noqa: E402

fit = engine.Trainer.fit


def fit_and_save_critic(self):
    result = fit(self)
    if self.distill is not None:
        own = {id(p) for p in self.distill.discriminator_parameters()}
        weights = {name: p.detach() for name, p in self.distill.loss.named_parameters() if id(p) in own}
        torch.save(weights, os.path.join(self.out_dir, f"critic_rank{self.env.rank}.pt"))
    return result


engine.Trainer.fit = fit_and_save_critic
sys.exit(train.main(sys.argv[1:]))
