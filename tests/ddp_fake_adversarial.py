"""torchrun entry for tests/test_ddp.py: frkd.train with the fake adversarial loss of test_discriminator
registered; each rank saves its discriminator weights to <out-dir>/critic_rank<r>.pt after the student phase."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from frkd import engine, train  # noqa: E402
from frkd.losses import registry  # noqa: E402
from test_discriminator import FakeAdversarial  # noqa: E402

registry.LOSSES["fakeadv"] = FakeAdversarial
fit = engine.Trainer.fit


def fit_and_save_critic(self):
    result = fit(self)
    if self.distill is not None:
        torch.save(self.distill.state_dict(), os.path.join(self.out_dir, f"critic_rank{self.env.rank}.pt"))
    return result


engine.Trainer.fit = fit_and_save_critic
sys.exit(train.main(sys.argv[1:]))
