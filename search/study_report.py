"""What a sweep leaves behind: the trials' table, `trials.json`, the best trial's config as a
ready-to-use `best_config.json` (marked interim while trials still run), Optuna's parameter
importances when there are enough trials, and plots (`plots/*.png`: optimization history,
importances, parallel coordinates, intermediate values) — `sweep.py` at the end,
`sweep.py --report FOLDER` any time."""
import json
from pathlib import Path

from base.settings import Monitor
from config.key_paths import apply_modifications
from search.search_space import trial_values
from utils.files import write_json

MIN_TRIALS_FOR_IMPORTANCE = 4  # completed trials; fewer say nothing about the parameters
INTERIM_KEY = "_interim"  # best_config.json's mark while trials still run (train.py ignores it)


def trial_rows(study, space: dict) -> list[dict]:
    """A row per trial: number, state (`lost`: failed with its machine and run again),
    value (the best monitored value; the mean over folds), epochs trained, params (as config
    values), and why a failed one failed."""
    from search.trial import lost_numbers

    rows = []
    trials = study.get_trials(deepcopy=False)
    lost = lost_numbers(trials)
    for trial in trials:
        steps = trial.intermediate_values
        error = trial.user_attrs.get("error")
        if trial.number in lost:  # failed by a sweep that saw no heartbeat; it ran again
            error = f"lost: its machine ({trial.user_attrs.get('host') or '?'}) stopped beating"
        rows.append({"number": trial.number,
                     "state": "lost" if trial.number in lost else trial.state.name.lower(),
                     "value": trial.value, "epochs": max(steps) if steps else 0,
                     "params": trial_values(trial.params, space),
                     "run": trial.user_attrs.get("run"), "error": error})
    return rows


def table_lines(rows: list[dict], metric: str) -> list[str]:
    """The rows as an aligned console table, a column per parameter (named by its key path's
    last part where that is unique; floats to 4 significant digits: trials.json has them all)."""
    from logger.progress import format_value
    from logger.test_report import aligned_table

    paths = list(dict.fromkeys(path for row in rows for path in row["params"]))
    last = [path.split(".")[-1] for path in paths]
    names = [short if last.count(short) == 1 else path for short, path in zip(last, paths)]
    cells = [[str(row["number"]), row["state"],
              format_value(row["value"]) if row["value"] is not None else "-",
              str(row["epochs"]), *(_short(row["params"][path]) if path in row["params"]
                                    else "-" for path in paths)]
             for row in rows]
    return aligned_table(["trial", "state", metric, "epochs", *names], cells)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)  # null, a block


def write_results(folder: Path, study, definition: dict) -> list[str]:
    """`trials.json` and, when a trial completed, `best_config.json`; the report's lines."""
    metric = Monitor.parse(definition["monitor"]).metric
    rows = trial_rows(study, definition["space"])
    lines = [f"Study {study.study_name}: {len(rows)} trial{'' if len(rows) == 1 else 's'} "
             f"({_counts(rows)}), {definition['monitor']}", *table_lines(rows, metric)]
    unfinished = [row for row in rows if row["state"] in ("running", "waiting")]
    summary = {"study": study.study_name, "monitor": definition["monitor"],
               "final": not unfinished, "trials": rows}
    complete = [row for row in rows if row["state"] == "complete"]
    if complete:
        best = study.best_trial
        # from the study, not the trial's config file: another machine may have run it
        base = {key: value for key, value in definition["config"].items()
                if key != INTERIM_KEY}  # a sweep started from an interim best_config.json
        config = apply_modifications(base, {
            **trial_values(best.params, definition["space"]),
            "trainer.save_dir": definition["save_dir"]})  # where the user's runs go
        if unfinished:
            config = {INTERIM_KEY: f"interim: the best of the trials finished when it was "
                                   f"written; {_still_running(unfinished)}. sweep.py --report "
                                   f"{folder} writes the final one", **config}
        write_json(config, folder / "best_config.json")
        summary["best"] = {"number": best.number, "value": best.value,
                           "params": trial_values(best.params, definition["space"]),
                           "command": reproduce_command(folder, definition,
                                                        best.user_attrs.get("threads"),
                                                        best.user_attrs.get("torchrun"))}
        lines += [f"{'Best so far' if unfinished else 'Best'}: trial {best.number}, {metric} "
                  f"{best.value:.6g}",
                  f"Its config: {folder / 'best_config.json'}; trains it again: "
                  f"{summary['best']['command']}"]
        if unfinished:
            lines.append(f"Interim: {_still_running(unfinished)}; best_config.json is marked "
                         f"interim (\"{INTERIM_KEY}\"): run sweep.py --report {folder} when "
                         f"{'they end' if len(unfinished) > 1 else 'it ends'}")
        importances = _importances(study, len(complete))
        if importances:
            summary["importances"] = importances
            lines.append("Parameter importances (fANOVA): " + ", ".join(
                f"{key} {value:.2f}" for key, value in importances.items()))
    write_json(summary, folder / "trials.json")
    lines += write_plots(folder, study, len(complete), metric)
    return lines


def _still_running(unfinished: list[dict]) -> str:
    numbers = ", ".join(str(row["number"]) for row in unfinished)
    return (f"{len(unfinished)} trial{'s' if len(unfinished) > 1 else ''} ({numbers}) "
            f"{'are' if len(unfinished) > 1 else 'is'} still running or queued")


# Optuna's matplotlib plots a sweep folder gets, by file name; importances need enough
# complete trials (MIN_TRIALS_FOR_IMPORTANCE), the others one
PLOTS = {"history": "plot_optimization_history", "importances": "plot_param_importances",
         "parallel_coordinates": "plot_parallel_coordinate",
         "intermediate_values": "plot_intermediate_values"}


def write_plots(folder: Path, study, completed: int, metric: str) -> list[str]:
    """`plots/<name>.png` for each of `PLOTS` the study has enough trials for (rewritten each
    time); the report's line naming them. matplotlib is the search leaf's dependency: without
    it, one line saying so."""
    if not completed:
        return []
    try:
        import matplotlib
    except ImportError:
        return ["No plots: matplotlib is not installed (pip install matplotlib)"]
    matplotlib.use("Agg")  # files only, no window
    import warnings

    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    plots = folder / "plots"
    plots.mkdir(exist_ok=True)
    written = []
    for name, function in PLOTS.items():
        if name == "importances" and completed < MIN_TRIALS_FOR_IMPORTANCE:
            continue
        with warnings.catch_warnings():  # "experimental"; no intermediate values yet
            warnings.simplefilter("ignore")
            try:
                named = {} if name == "intermediate_values" else {"target_name": metric}
                axes = getattr(optuna_plots, function)(study, **named)
            except (ValueError, RuntimeError):  # e.g. a parameter that never varied
                continue
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        if name == "intermediate_values":  # Optuna's step is the epoch, its value the metric
            first.set_xlabel("epoch")
            first.set_ylabel(metric)
        figure = first.get_figure()
        figure.set_size_inches(9, 5.5)
        figure.tight_layout()
        figure.savefig(plots / f"{name}.png", dpi=100)
        plt.close(figure)
        written.append(f"{name}.png")
    return [f"Plots: {plots}/ ({', '.join(written)})"] if written else []


def reproduce_command(folder: Path, definition: dict, threads: str | None,
                      torchrun: int | None = None) -> str:
    """The command that trains the best trial again, bit for bit: with the threads its torch
    had (on the CPU a reduction's float result depends on how many threads share it), under
    torchrun with as many processes when it ran so."""
    import shlex

    launcher = f"torchrun --standalone --nproc_per_node={torchrun}" if torchrun else "python"
    command = f"{launcher} train.py -c {shlex.quote(str(folder / 'best_config.json'))}"
    if definition.get("folds"):
        command += f" --folds {definition['folds']}"
    return f"OMP_NUM_THREADS={threads} {command}" if threads else command


def _counts(rows: list[dict]) -> str:
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    return ", ".join(f"{count} {state}" for state, count in states.items())


def _importances(study, completed: int) -> dict[str, float] | None:
    """Optuna's parameter importances, when enough trials completed to say anything."""
    import optuna

    if completed < MIN_TRIALS_FOR_IMPORTANCE:
        return None
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (ValueError, RuntimeError):  # e.g. a parameter that never varied
        return None
