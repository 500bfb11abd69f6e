"""Two optimizers: a small GAN on the digits. The config names an optimizer for each network
(`optimizers.generator`, `optimizers.discriminator`, each with its `params`); the step, in
manual optimization, backpropagates and steps each itself with `self.backward(loss)` and
`self.step(name)`, which keep amp scaling, clipping, accumulation and the NaN policy."""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from base import BaseModel
from trainer.trainer import Trainer


class GAN(BaseModel):
    """`generator`: noise (B, latent) -> images (B, 1, 8, 8) in [0, 1]; `discriminator`: images
    -> a logit (B,) that they are real. `forward` is the discriminator."""

    def __init__(self, latent: int = 16, hidden: int = 128):
        super().__init__()
        self.latent = latent
        self.generator = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(),
                                       nn.Linear(hidden, 64), nn.Sigmoid(),
                                       nn.Unflatten(1, (1, 8, 8)))
        self.discriminator = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden),
                                           nn.LeakyReLU(0.2), nn.Linear(hidden, 1),
                                           nn.Flatten(0))

    def forward(self, images: Tensor) -> Tensor:
        return self.discriminator(images)


# --- the trainer code of this example: 20 lines
class GANTrainer(Trainer):
    """The discriminator steps on real against generated images, then the generator on
    fooling it; both losses are logged."""

    automatic_optimization = False

    def training_step(self, batch) -> dict[str, Tensor]:
        images, _ = batch                                                    # (B, 1, 8, 8)
        gan = self.module
        fake = gan.generator(torch.randn(images.size(0), gan.latent, device=images.device))
        real_logits, fake_logits = gan.discriminator(images), gan.discriminator(fake.detach())
        d_loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) +
                  F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        self.backward(d_loss)
        self.step("discriminator")
        fooled = gan.discriminator(fake)
        g_loss = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
        self.backward(g_loss)
        self.step("generator")
        return {"loss": d_loss + g_loss, "d_loss": d_loss, "g_loss": g_loss}
