"""Two heads, two tasks: one trunk reads a digit image, one head names the digit, the other
estimates how much ink it was written with (the image's mean brightness, a regression). The
step returns both outputs and both targets as dicts; each metric block of the config names the
head it reads (`"output": "digit"`, `"output": "ink"`), and `trainer.args.ink_weight` weighs the
regression loss against the classification loss."""
import torch.nn.functional as F
from torch import Tensor, nn

from base import BaseModel
from trainer.trainer import Trainer


class DigitAndInk(BaseModel):
    """A small CNN trunk and two heads: `{"digit": (B, 10) log-probabilities, "ink": (B,)}`."""

    def __init__(self, num_classes: int = 10, channels: int = 16):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * channels * 4 * 4, 64), nn.ReLU())
        self.digit = nn.Linear(64, num_classes)
        self.ink = nn.Linear(64, 1)

    def forward(self, images: Tensor) -> dict[str, Tensor]:      # (B, 1, 8, 8)
        features = self.trunk(images)                               # (B, 64)
        return {"digit": F.log_softmax(self.digit(features), dim=1),
                "ink": self.ink(features).squeeze(1)}


# --- the trainer code of this example: 13 lines
class TwoHeadTrainer(Trainer):
    """The loss of both heads; outputs and targets by head, for the metrics to pick from."""

    def __init__(self, *args, ink_weight: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.ink_weight = ink_weight

    def training_step(self, batch) -> dict:
        images, labels = batch                                      # (B, 1, 8, 8), (B,)
        output = self.model(images)
        target = {"digit": labels, "ink": images.mean(dim=(1, 2, 3))}
        loss = F.nll_loss(output["digit"], labels) + self.ink_weight * F.mse_loss(
            output["ink"], target["ink"])
        return {"loss": loss, "output": output, "target": target}
