"""The loop a person writes by hand for the default config's experiment: the other side of
`bench/overhead.py --whole-process`.

    python bench/bare_loop.py --epochs 40 --save-dir /tmp/bare

The same data (the digits' training part, the same 10 % validation split), model, optimizer,
schedule, loss and batch size as `config.json`, with a plain DataLoader (per-sample fetching and
`default_collate`), an eval pass (loss and accuracy) and a `torch.save` of model, optimizer and
scheduler each epoch (what resuming needs; no fsync). No metrics on the training batches, no
TensorBoard, no model_best, no checks.
"""
import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, SubsetRandomSampler

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from base.base_data_loader import split_indices  # noqa: E402
from data_loader.datasets import digits_dataset  # noqa: E402
from model.model import DigitsModel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--save-dir", required=True)
    args = parser.parse_args()
    config = json.loads((ROOT / "config.json").read_text())
    torch.manual_seed(config["seed"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset = digits_dataset(ROOT / "data", training=True)
    train_loader, valid_loader = plain_loaders(dataset, config, device)
    model = DigitsModel().to(device)
    optimizer = torch.optim.Adam(model.parameters(), **config["optimizer"]["args"])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, **config["lr_scheduler"]["args"])
    save_dir = Path(args.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    train_epochs(model, F.nll_loss, optimizer, train_loader, valid_loader, args.epochs, save_dir,
                 device, scheduler)


def plain_loaders(dataset, config: dict, device: torch.device) -> tuple[DataLoader, DataLoader]:
    """Plain DataLoaders (a sample at a time) over the config's training and validation split."""
    loader_args = config["data_loader"]["args"]
    train_idx, valid_idx = split_indices(len(dataset), loader_args["validation_split"],
                                         config["seed"])
    batch_size = loader_args["batch_size"]
    train_loader = DataLoader(dataset, batch_size, sampler=SubsetRandomSampler(train_idx),
                              pin_memory=device.type == "cuda")
    return train_loader, DataLoader(dataset, batch_size, sampler=valid_idx)


def train_epochs(model, criterion, optimizer, train_loader, valid_loader, epochs: int,
                 save_dir: Path, device: torch.device, scheduler=None,
                 steps_per_epoch: int | None = None) -> None:
    """The hand-written loop: train, validate (loss and accuracy), save; `steps_per_epoch`:
    as `trainer.len_epoch`."""
    for epoch in range(1, epochs + 1):
        model.train()
        for data, target in itertools.islice(train_loader, steps_per_epoch):
            data, target = data.to(device, non_blocking=True), target.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(data), target)
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        model.eval()
        correct = total = 0
        loss_sum = torch.zeros((), device=device)
        with torch.no_grad():
            for data, target in valid_loader:
                data, target = data.to(device), target.to(device)
                output = model(data)
                loss_sum += criterion(output, target, reduction="sum")
                correct += int((output.argmax(1) == target).sum())
                total += target.size(0)
        print(f"epoch {epoch}: val_loss {float(loss_sum) / total:.6f} "
              f"val_accuracy {correct / total:.6f}", file=sys.stderr, flush=True)
        torch.save({"epoch": epoch, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None},
                   save_dir / f"checkpoint-epoch{epoch}.pth")  # what resuming needs


if __name__ == "__main__":
    main()
