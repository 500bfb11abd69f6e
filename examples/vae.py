"""A loss with parts: a small variational autoencoder on the digits. Its step returns the loss
with its reconstruction and KL parts, logged separately; the KL term warms up over
`trainer.args.kl_warmup_epochs` epochs, a trainer option of its own."""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from base import BaseModel
from trainer.trainer import Trainer


class VAE(BaseModel):
    """64 pixels -> `hidden` -> a `latent`-dimensional Gaussian -> `hidden` -> 64 pixels."""

    def __init__(self, latent: int = 4, hidden: int = 64):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(),
                                     nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, 64))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encoder(images).chunk(2, dim=1)                    # (B, latent) each
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        recon = torch.sigmoid(self.decoder(z)).view_as(images)              # (B, 1, 8, 8)
        return recon, mu, logvar


# --- the trainer code of this example: 21 lines
class VAETrainer(Trainer):
    """The ELBO as the loss, its parts logged; the KL weight rises linearly to 1 over the
    first `kl_warmup_epochs` epochs (validation and test use the full ELBO)."""

    def __init__(self, *args, kl_warmup_epochs: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.kl_warmup_epochs = kl_warmup_epochs

    def kl_weight(self) -> float:
        return min(1.0, self.epoch / self.kl_warmup_epochs) if self.kl_warmup_epochs else 1.0

    def training_step(self, batch, kl_weight: float | None = None) -> dict[str, Tensor]:
        images, _ = batch                                                    # (B, 1, 8, 8)
        recon, mu, logvar = self.model(images)
        recon_loss = F.binary_cross_entropy(recon, images, reduction="sum") / images.size(0)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1).mean()
        weight = self.kl_weight() if kl_weight is None else kl_weight
        return {"loss": recon_loss + weight * kl, "recon": recon_loss, "kl": kl}

    def validation_step(self, batch) -> dict[str, Tensor]:
        return self.training_step(batch, kl_weight=1.0)
