"""step/metrics.py: an epoch's values, exact over the epoch for torchmetrics metrics."""
import pytest
import torch
from torchmetrics.classification import MulticlassF1Score
from torchmetrics.regression import MeanSquaredError

from model.metric import accuracy
from step.batches import StepOutput
from step.metrics import EpochMetrics


def rmse_of_batch(output, target):
    return ((output - target) ** 2).mean().sqrt()


def regression_batches():
    generator = torch.Generator().manual_seed(0)
    sizes = [32, 32, 7]  # a short last batch, as in a real epoch
    return [(torch.randn(n, generator=generator) * (i + 1), torch.randn(n, generator=generator))
            for i, n in enumerate(sizes)]


def named(function, name):
    function.__name__ = name
    return function


def run(metrics: EpochMetrics, batches) -> dict[str, float]:
    for output, target in batches:
        metrics.update(StepOutput(((output - target) ** 2).mean(), output, target), len(target))
    return metrics.result()


def test_rmse_as_a_torchmetrics_metric_is_exact_over_the_epoch_a_function_is_not():
    batches = regression_batches()
    output, target = torch.cat([o for o, _ in batches]), torch.cat([t for _, t in batches])
    true_rmse = float(((output - target) ** 2).mean().sqrt())
    values = run(EpochMetrics([named(MeanSquaredError(squared=False), "rmse"),
                               rmse_of_batch]), batches)
    assert values["rmse"] == pytest.approx(true_rmse, rel=1e-6)
    assert abs(values["rmse_of_batch"] - true_rmse) > 1e-3  # a mean of batch RMSEs is not
    assert list(values) == ["loss", "rmse", "rmse_of_batch"]  # the loss, then the config's order


def test_macro_f1_is_exact_over_the_epoch():
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(n, 3, generator=generator),
                torch.randint(0, 3, (n,), generator=generator)) for n in (16, 16, 5)]
    metrics = EpochMetrics([named(MulticlassF1Score(num_classes=3, average="macro"), "f1"),
                            accuracy])
    for output, target in batches:
        metrics.update(StepOutput(torch.tensor(0.0), output, target), len(target))
    predicted = torch.cat([o.argmax(1) for o, _ in batches])
    target = torch.cat([t for _, t in batches])
    scores = []
    for c in range(3):
        tp = int(((predicted == c) & (target == c)).sum())
        fp = int(((predicted == c) & (target != c)).sum())
        fn = int(((predicted != c) & (target == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    values = metrics.result()
    assert values["f1"] == pytest.approx(sum(scores) / 3, rel=1e-6)
    correct = float((predicted == target).float().mean())
    assert values["accuracy"] == pytest.approx(correct, rel=1e-6)


def test_a_mid_epoch_state_continues_to_the_same_values():
    batches = regression_batches()
    straight = run(EpochMetrics([named(MeanSquaredError(squared=False), "rmse")]), batches)
    first = EpochMetrics([named(MeanSquaredError(squared=False), "rmse")])
    run(first, batches[:2])
    state = first.state_dict()
    assert isinstance(state["metrics"]["rmse"]["total"], torch.Tensor)  # plain data
    resumed = EpochMetrics([named(MeanSquaredError(squared=False), "rmse")])
    resumed.load_state_dict(state, "cpu")
    assert run(resumed, batches[2:]) == straight
    other = EpochMetrics([named(MeanSquaredError(squared=False), "rmse")])
    other.load_state_dict(state, "cpu", main=False)  # torchrun: only rank 0 carries the sums on
    assert "loss" not in other.result()  # nothing carried on (its RMSE alone is NaN)


def test_loss_parts_are_sample_weighted_means_after_the_loss():
    metrics = EpochMetrics([])
    metrics.update(StepOutput(torch.tensor(1.0), parts={"kl": torch.tensor(2.0)}), 3)
    metrics.update(StepOutput(torch.tensor(4.0), parts={"kl": torch.tensor(0.0)}), 1)
    assert metrics.result() == {"loss": 1.75, "kl": 1.5}


def test_training_and_validation_keep_separate_metric_states():
    metric = named(MeanSquaredError(), "mse")
    train, valid = EpochMetrics([metric]), EpochMetrics([metric])
    run(train, [(torch.ones(2), torch.zeros(2))])
    run(valid, [(torch.zeros(2), torch.zeros(2))])
    assert train.result()["mse"] == 1.0 and valid.result()["mse"] == 0.0
