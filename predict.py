"""Run a trained model on new data and write its predictions:
`python predict.py -r saved/models/Digits_CNN/<run_id>/model_best.pth --input new.pt`.

The inputs: `--input FILE.pt` (a tensor of N samples, or a dict of tensors of N rows each: the
model's arguments), or without it the data loader's test split (its targets are not used).
Each batch goes through the trainer's `predict_step` (default: the model's output), in eval
mode without gradients; the outputs are written in the inputs' order next to the checkpoint:
`<checkpoint>.predictions.csv` for one value or one row of class scores per sample (a column
`class` when the model was trained on class labels), else `<checkpoint>.predictions.pt`.
Under torchrun (with `--input`) each process predicts its share of the batches and rank 0
writes them all, in order.
"""
import argparse
import itertools
import sys
from pathlib import Path

from config.command_line import parse_command_line
from utils.cli import run_cli
from utils.errors import UserError


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description="Run a trained model on new data and write "
                                                 "its predictions.")
    parser.add_argument("--input", metavar="FILE.pt",
                        help="the inputs: a tensor (N, ...) or a dict of tensors of N rows, saved "
                             "with torch.save (default: the data loader's test split)")
    parser.add_argument("--output", metavar="FILE",
                        help="where to write them, .csv or .pt (default: next to the checkpoint)")
    args = parse_command_line(parser, (), argv, evaluating=True)
    from train import evaluation_configs

    _, config = evaluation_configs(args, args.resume)
    from utils import distributed

    device = None
    if distributed.launched_world_size() > 1 and args.input is None:
        raise UserError("under torchrun, predict.py shares out the batches of an --input file; "
                        "the test split is predicted in one process: python predict.py -r ...")
    if distributed.launched_world_size() > 1:
        import torch

        device = distributed.start(config.get("n_gpu", 1) > 0 and torch.cuda.is_available())
    try:
        return predict(config, args.input, args.output, device)
    finally:
        distributed.stop()


def predict(config, input_path: str | None, output: str | None, device=None) -> Path:
    """Predict with the checkpoint `config.resume` on `input_path` (or the test split) and
    write the predictions; their path."""
    import torch

    from deploy.predictions import input_batches, is_classifier, predictions_path, write_predictions
    from logger.logger import setup_logging
    from logger.progress import bars_wanted, counted, progress_bar
    from step.batches import move_to_device
    from utils import distributed

    setup_logging(None)
    batches = input_batches(Path(input_path), config) if input_path else None
    out = predictions_path(config.resume, output)
    from train import checkpoint_trainer

    trainer, _ = checkpoint_trainer(config, device)
    classifier = is_classifier(trainer)
    if batches is None:
        batches = trainer.data_loader
    # this process's share: every world_size-th batch, from its rank on
    rank, processes = distributed.rank(), distributed.world_size()
    shard = itertools.islice(enumerate(batches), rank, None, processes)
    trainer.model.eval()
    outputs = []
    bars = bars_wanted((config.get("trainer") or {}).get("progress_bar", "auto")) and \
        distributed.is_main()
    cpu = torch.device("cpu")
    with torch.no_grad(), progress_bar(bars, len(range(rank, len(batches), processes)),
                                       "predict", unit="batch") as bar:
        for index, batch in counted(shard, bar):
            output = trainer.predict_step(trainer.to_device(batch))
            outputs.append((index, move_to_device(output, cpu)))
    everything = sorted((item for part in distributed.gathered(outputs) for item in part),
                        key=lambda item: item[0])  # the inputs' order, whoever predicted them
    if not distributed.is_main():
        return out
    written = write_predictions([output for _, output in everything], out, classifier)
    print(f"Predictions of {config.resume} written to {written}")
    return written


if __name__ == "__main__":
    run_cli(lambda: sys.exit(0 if main() else 1))
