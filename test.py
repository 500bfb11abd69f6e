"""Evaluate a checkpoint on the test split: `python test.py -r path/to/model_best.pth`."""
import argparse
import json

import train
from parse_config import ConfigParser
from utils import distributed
from utils.cli import run_cli
from utils.errors import UserError

# The blocks test.py builds: train.py's, without the optimizer and the scheduler.
BLOCKS = tuple(block for block in train.BLOCKS if block.key not in ("optimizer", "lr_scheduler"))


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description="Evaluate a checkpoint on the test split.")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective config (checkpoint's or -c, + overrides) and exit")
    config = ConfigParser.from_args(parser, argv=argv, evaluating=True)
    if distributed.launched_world_size() > 1:
        raise UserError("test.py evaluates in one process: start it with python, not torchrun")
    test_config = config.with_modification({"data_loader.args.training": False,
                                            "data_loader.args.shuffle": False,
                                            "data_loader.args.validation_split": 0.0})
    test_config.validate(BLOCKS, trainer=False)  # every problem at once, before anything is built
    if config.cli_args.print_config:
        print(json.dumps(config.config, indent=4))
        return {}
    results, epoch = evaluate_checkpoint(test_config)
    out_path = config.resume.with_name(f"{config.resume.stem}.test.json")
    from utils.util import write_json
    write_json({"checkpoint": str(config.resume), "epoch": epoch, **results}, out_path)
    width = max(map(len, results))
    for key, value in results.items():
        print(f"    {key:<{width}}  {value:.6f}" if isinstance(value, float) else
              f"    {key:<{width}}  {value}")
    print(f"Test metrics written to {out_path}")
    return results


def evaluate_checkpoint(config: ConfigParser) -> tuple[dict, int]:
    """Loss and metrics of the checkpoint `config.resume` on the test split, and its epoch."""
    import data_loader.data_loaders as module_data
    import model.loss as module_loss
    import model.metric as module_metric
    import model.model as module_arch
    from base.base_data_loader import release_workers
    from base.base_trainer import metric_name
    from logger.logger import setup_logging
    from trainer.checkpoint import load_checkpoint, load_model_state
    from trainer.evaluation import check_first_batch, evaluate
    from utils.util import prepare_device

    setup_logging(None)  # console only: test.py writes nothing but its report
    checkpoint = load_checkpoint(config.resume)
    data_loader = config.init_obj("data_loader", module_data, seed=config.get("seed", 0))
    model = config.init_obj("arch", module_arch)
    load_model_state(model, checkpoint["state_dict"], config.resume)
    device, _ = prepare_device(min(config.get("n_gpu", 1), 1))
    model = model.to(device)

    criterion = config.init_ftn("loss", module_loss)
    metric_fns = config.init_ftn_list("metrics", module_metric, reserved=["loss"])
    names = [metric_name(fn) for fn in metric_fns]
    check_first_batch(model, data_loader, criterion, metric_fns, device)
    results = evaluate(model, data_loader, criterion, metric_fns, names, device)
    release_workers(data_loader)
    results["n_samples"] = len(data_loader.sampler)
    return results, checkpoint["epoch"]


if __name__ == "__main__":
    run_cli(main)
