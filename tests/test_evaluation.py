"""step/evaluation.py: the confusion matrix test.py reports."""
import torch

from step.evaluation import ConfusionMatrix, broadcast_warning
from tests.conftest import build


def scores(predicted: list[int], classes: int = 3) -> torch.Tensor:
    """Class scores whose argmax is `predicted`."""
    return torch.nn.functional.one_hot(torch.tensor(predicted), classes).float()


def test_confusion_matrix_counts_true_against_predicted_over_batches():
    confusion = ConfusionMatrix()
    confusion.update(scores([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2]))
    confusion.update(scores([0, 0]), torch.tensor([2, 0]))
    assert confusion.matrix == [[2, 0, 0],
                                [0, 1, 1],
                                [1, 0, 1]]


def test_ignored_targets_are_not_counted():
    confusion = ConfusionMatrix()
    confusion.update(scores([0, 1, 2]), torch.tensor([0, -100, 2]))
    assert sum(map(sum, confusion.matrix)) == 2


def test_output_that_is_not_class_scores_has_no_matrix():
    regression = ConfusionMatrix()
    regression.update(torch.randn(4, 1), torch.randn(4, 1))
    assert regression.matrix is None
    float_targets = ConfusionMatrix()
    float_targets.update(torch.randn(4, 3), torch.rand(4))
    assert float_targets.matrix is None
    pairs = ConfusionMatrix()  # a model that returns (scores, features)
    pairs.update((torch.randn(4, 3), torch.randn(4, 8)), torch.tensor([0, 1, 2, 0]))
    assert pairs.matrix is None
    changing = ConfusionMatrix()  # a model whose class count changes between batches
    changing.update(scores([0, 1]), torch.tensor([0, 1]))
    changing.update(scores([0, 1], classes=4), torch.tensor([0, 1]))
    assert changing.matrix is None


def test_evaluate_fills_the_confusion_matrix_with_every_sample(tmp_path):
    trainer = build(tmp_path, {"loss": "cross_entropy", "metrics": []})
    model = trainer.model = trainer.eval_model = torch.nn.Linear(2, 3)
    batches = [(torch.randn(5, 2), torch.randint(0, 3, (5,))) for _ in range(3)]
    confusion = ConfusionMatrix()
    log = trainer.evaluate(batches, confusion=confusion)
    assert sum(map(sum, confusion.matrix)) == 15
    predicted = torch.cat([model(data).argmax(1) for data, _ in batches])
    targets = torch.cat([target for _, target in batches])
    assert confusion.matrix[0][0] == int(((predicted == 0) & (targets == 0)).sum())
    assert set(log) == {"loss"}
    assert model.training  # evaluation restores the mode


def test_a_column_output_against_a_flat_target_is_warned_about():
    warning = broadcast_warning(torch.zeros(64, 1), torch.zeros(64))
    assert warning.startswith("Warning: the output (64, 1) and the target (64,) differ in shape "
                              "and broadcast to (64, 64)")
    assert broadcast_warning(torch.zeros(64), torch.zeros(64)) is None
    assert broadcast_warning(torch.zeros(64, 10), torch.zeros(64, dtype=torch.long)) is None
    assert broadcast_warning(torch.zeros(8, 3), torch.zeros(3)) is None  # per-column targets
