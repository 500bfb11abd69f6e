"""test.py --compare: several checkpoints' test results as one table."""
from logger.progress import format_value
from logger.test_report import aligned_table


def comparison_lines(results: list[dict]) -> list[str]:
    """Several checkpoints' test results (`{"checkpoint", "epoch", "results"}`) as one table:
    a row per checkpoint, a column per value any of them has."""
    keys = list(dict.fromkeys(key for result in results for key in result["results"]))
    rows = [[str(result["checkpoint"]), str(result["epoch"]),
             *(_cell(result["results"].get(key)) for key in keys)] for result in results]
    return aligned_table(["checkpoint", "epoch", *keys], rows)


def _cell(value) -> str:
    if value is None:
        return "-"
    return format_value(value) if isinstance(value, float) else f"{value:,}" \
        if isinstance(value, int) else str(value)
