"""Several runs as one table: a results folder with a run folder per version and seed, and results.md, .csv and
.png. Running the same command again skips finished runs and resumes unfinished ones; each run's row comes from its
checkpoint's metrics, cut to the epochs the table asks for."""
import statistics
from dataclasses import replace
from pathlib import Path

from configs import VERSIONS
from distributed import say
from errors import RunnerError
from records import RunFolder, write_text, atomic_write
from settings import DATASETS, RunConfig, differences

RESULT_FILES = ("results.md", "results.csv", "results.png")
RESULT_COLUMNS = ["version", "dataset", "params", "epochs", "seeds", "train_acc", "test_acc", "test_acc_std",
                  "ref_train_acc", "ref_test_acc", "test_delta", "seconds"]


def run_name(version: int, seed: int, seeds_given: bool) -> str:
    return f"v{version}-seed{seed}" if seeds_given else f"v{version}"


def claim_results_folder(path: Path) -> None:
    """A results folder is new, empty, or holds only run folders of ours and results files; anything else is
    refused before anything is written."""
    if path.exists():
        foreign = [entry.name for entry in path.iterdir() if not (
            entry.name in RESULT_FILES or entry.name.startswith(".")
            or (entry.is_dir() and (RunFolder(entry).is_ours() or not any(entry.iterdir()))))]
        if foreign:
            raise RunnerError(f"{path} is not a results folder (it holds {foreign[0]}, which no run of this tool "
                              "wrote): give --out a new or empty folder (nothing in it was changed)")
    else:
        path.mkdir(parents=True)


def check_same_run(folder: RunFolder, planned: RunConfig) -> None:
    """A run folder of the table must hold the run the table asks for: same recipe (the epochs aside) and identity."""
    stored = folder.read_config()
    changes = differences(replace(stored.recipe, epochs=planned.recipe.epochs), planned.recipe) + \
        differences(stored.identity, planned.identity)
    if stored.version != planned.version:
        changes.insert(0, ("version", stored.version, planned.version))
    if changes:
        name, theirs, ours = changes[0]
        raise RunnerError(f"{folder.path} was trained with {name}={theirs!r}, this command asks {ours!r}: use "
                          "another --out, or --force to start over")
    if planned.fixed_length and planned.recipe.epochs != stored.recipe.epochs:
        raise RunnerError(f"{folder.path}: version {planned.version}'s schedule spans the {stored.recipe.epochs} "
                          f"epochs it was trained with, so it is not the {planned.recipe.epochs}-epoch run this "
                          "command asks for: use another --out")


def run_table(planned: list, force: bool, train, after_each_run=None) -> None:
    """Train every planned (RunConfig, RunFolder) that is not finished, with train(run, folder, resume)."""
    for run, folder in planned:
        if force:
            folder.clear()
        done = 0
        if folder.has_checkpoint():
            check_same_run(folder, run)
            done = folder.epochs_done()
        if done >= run.recipe.epochs:
            say(f"Version {run.version}, seed {run.identity.seed}: finished ({done} epochs) in {folder.path}; "
                "skipped")
            continue
        if not done:
            folder.claim(force=True)
        row = VERSIONS[run.version]
        say(f"\n== Version {run.version}, seed {run.identity.seed}: {DATASETS[row.dataset].title}, "
            f"{row.recipe.model} ({'resuming after epoch ' + str(done) if done else 'new'}) -> {folder.path}")
        train(run, folder, done > 0)
        if after_each_run:
            after_each_run()


def report(results_dir: Path, planned: list) -> list:
    """Write results.md, .csv and .png and print the table; returns its rows. A planned run without a result at
    the table's epochs is a failure (RunnerError) naming it, after the table that shows why in its status."""
    rows = write_results(results_dir, planned)
    print("\n" + markdown_table(rows))
    missing = [row for row in rows if row["status"] != "ok"]
    if missing:
        raise RunnerError(f"{len(missing)} of {len(rows)} rows of {results_dir / 'results.csv'} lack runs: version "
                          f"{missing[0]['version']}: {missing[0]['status']} (its status column says why)")
    return rows


def run_summary(folder: RunFolder, epochs: int) -> tuple[dict | None, str]:
    """A run's numbers at the table's epoch count, from its checkpoint: train accuracy of that epoch, test
    accuracy of its last tested epoch up to it (the final test-time-augmented one when the run ended there). With
    them "ok"; without (None), why not."""
    if not folder.has_checkpoint():
        return None, "not trained yet"
    metrics = folder.load_checkpoint()["metrics"]
    tested = [row["epoch"] for row in metrics if row["test_acc"] is not None]
    if len(metrics) < epochs:
        return None, f"trained {len(metrics)} of {epochs} epochs"
    metrics = metrics[:epochs]
    if not [row for row in metrics if row["test_acc"] is not None]:
        return None, f"not tested by epoch {epochs} (tested after epochs {', '.join(map(str, tested))})"
    last = [row for row in metrics if row["test_acc"] is not None][-1]
    final = last["epoch"] == epochs and "final_test_acc" in last
    return dict(train_acc=metrics[-1]["train_acc"], test_acc=last["final_test_acc"] if final else last["test_acc"],
                seconds=sum(row["seconds"] for row in metrics) + (last["final_test_seconds"] if final else 0),
                curve={row["epoch"]: row["test_acc"] for row in metrics if row["test_acc"] is not None}), "ok"


def write_results(results_dir: Path, planned: list) -> list:
    """A row per version planned, from the runs that have a result at the table's epochs; `status` says "ok" or
    which runs have none and why, so a row is never left out silently."""
    runs = {}
    for run, folder in planned:
        runs.setdefault(run.version, []).append((run, *run_summary(folder, run.recipe.epochs)))
    rows, curves = [], {}
    for version, outcomes in runs.items():
        run = outcomes[0][0]
        summaries = [summary for _, summary, _ in outcomes if summary]
        missing = [f"seed {other.identity.seed}: {status}" for other, summary, status in outcomes if not summary]
        tests = [summary["test_acc"] for summary in summaries]
        reference = VERSIONS[version].reference
        folder_name = run.runtime.image_folder and Path(run.runtime.image_folder).name
        mean = statistics.fmean(tests) if tests else None
        rows.append(dict(
            version=version, dataset=run.dataset + (f" (folder: {folder_name})" if folder_name else ""),
            params=VERSIONS[version].params, epochs=run.recipe.epochs, seeds=len(summaries),
            train_acc=statistics.fmean(summary["train_acc"] for summary in summaries) if summaries else None,
            test_acc=mean, test_acc_std=statistics.stdev(tests) if len(tests) > 1 else None,
            ref_train_acc=reference[0] if reference else None, ref_test_acc=reference[1] if reference else None,
            test_delta=mean - reference[1] if reference and tests else None,
            reference_source=VERSIONS[version].reference_source,
            seconds=statistics.fmean(summary["seconds"] for summary in summaries) if summaries else None,
            status="; ".join(missing) or "ok"))
        if summaries:
            epochs = sorted({epoch for summary in summaries for epoch in summary["curve"]})
            curves.setdefault(DATASETS[run.dataset].title, {})[f"v{version}"] = (epochs, [
                statistics.fmean(summary["curve"][epoch] for summary in summaries if epoch in summary["curve"])
                for epoch in epochs])
    columns = RESULT_COLUMNS + ["status"]
    lines = [",".join(columns)] + [",".join(format_value(row[name], csv=True) for name in columns) for row in rows]
    write_text(results_dir / "results.csv", "\n".join(lines) + "\n")
    write_text(results_dir / "results.md", markdown_table(rows) + "\n")
    if curves:
        import plots

        atomic_write(results_dir / "results.png", lambda f: plots.save(plots.results_figure(curves), f))
    return rows


def format_value(value, csv: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if csv else f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"
    text = str(value)
    return f'"{text}"' if csv and "," in text else text


def markdown_table(rows: list) -> str:
    header = ("v", "dataset", "params", "epochs", "seeds", "train acc", "test acc (± std)", "reference train / test",
              "test Δ", "seconds")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        test = format_value(row["test_acc"]) + (f" ± {row['test_acc_std']:.4f}" if row["test_acc_std"] else "")
        reference = "" if row["ref_test_acc"] is None else \
            f"{row['ref_train_acc']:.2f} / {row['ref_test_acc']:.2f}" + (
                "" if row["reference_source"] == "seed" else f" ({row['reference_source']})")
        delta = "" if row["test_delta"] is None else f"{row['test_delta']:+.4f}"
        lines.append("| " + " | ".join([
            str(row["version"]), row["dataset"], f"{row['params']:,}", str(row["epochs"]), str(row["seeds"]),
            format_value(row["train_acc"]), test, reference, delta,
            "" if row["seconds"] is None else f"{row['seconds']:.0f}"]) + " |")
    notes = [f"v{row['version']} lacks runs: {row['status']}" for row in rows if row["status"] != "ok"]
    return "\n".join(lines + ([""] + notes if notes else []))
