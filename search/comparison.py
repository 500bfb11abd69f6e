"""test.py --compare: several checkpoints' test results as one table."""
from pathlib import Path

from logger.progress import format_value
from logger.test_report import aligned_table


def test_data_problem(configs: list) -> str | None:
    """Why the checkpoints (their test `ConfigParser`s) cannot share one table, or None: a
    comparison is of models tested on the same data — the same data loader type and data
    folder (the digits beside the diabetes table would be one table of unrelated numbers)."""
    def data_of(config) -> str:
        section = config["data_loader"]
        folder = (section.get("args") or {}).get("data_dir")
        return f"{section.get('type')} on {Path(folder).resolve() if folder else '?'}"

    kinds = {}
    for config in configs:
        kinds.setdefault(data_of(config), []).append(str(config.resume))
    if len(kinds) < 2:
        return None
    listed = "; ".join(f"{kind}: {', '.join(paths)}" for kind, paths in kinds.items())
    return (f"--compare: the checkpoints are tested on different data ({listed}); compare "
            f"models of one task, or give them one test config with -c")


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
