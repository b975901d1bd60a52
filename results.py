"""Several runs as one table: a results folder with a run folder per version and seed, results.md/.csv/.png."""
import statistics
from pathlib import Path

import plots
from configs import DATASETS, VERSIONS
from errors import RunnerError
from train import CHECKPOINT, CONFIG, METRICS, RECIPE_FIELDS, RunConfig, epochs_done, fit, read_config, read_metrics

RUN_FILES = (CONFIG, METRICS, "curves.png", CHECKPOINT, "confusion.png")
RESULT_COLUMNS = ["version", "dataset", "params", "epochs", "seeds", "train_acc", "test_acc", "test_acc_std",
                  "seed_train_acc", "seed_test_acc", "test_delta", "seconds"]


def clear_run(run_dir: Path) -> None:
    """Remove a run's record files (only those: the folder may hold the user's own files too)."""
    for name in RUN_FILES:
        for path in (run_dir / name, run_dir / f"{name}.tmp"):
            path.unlink(missing_ok=True)


def run_name(version: int, seed: int, several_seeds: bool) -> str:
    return f"v{version}-seed{seed}" if several_seeds else f"v{version}"


def run_table(plan: dict, seeds: list, results_dir: Path, force: bool, quiet: bool) -> None:
    """Train every version (plan: version -> its settings) for every seed, skipping finished runs and resuming
    unfinished ones."""
    results_dir.mkdir(parents=True, exist_ok=True)
    planned = [(RunConfig.for_version(version, **settings, seed=seed),
                results_dir / run_name(version, seed, len(seeds) > 1))
               for version, settings in plan.items() for seed in seeds]
    for cfg, run_dir in planned:
        version = cfg.version
        if force:
            clear_run(run_dir)
        if (run_dir / CONFIG).exists():
            stored = read_config(run_dir)
            for name in RECIPE_FIELDS:
                if getattr(stored, name) != getattr(cfg, name):
                    raise RunnerError(f"{run_dir} was trained with {name}={getattr(stored, name)!r}, this command "
                                      f"asks {getattr(cfg, name)!r}: use another --out, or --force to start over")
        done = epochs_done(run_dir)
        if done >= cfg.epochs:
            print(f"Version {version}, seed {cfg.seed}: finished ({done} epochs) in {run_dir}; skipped", flush=True)
            continue
        row = VERSIONS[version]
        print(f"\n== Version {version}, seed {cfg.seed}: {DATASETS[row.dataset].title}, {row.model} "
              f"({'resuming after epoch ' + str(done) if done else 'new'}) -> {run_dir}", flush=True)
        fit(cfg, run_dir, resume=done > 0, quiet=quiet)
        write_results(results_dir, planned)
    rows = write_results(results_dir, planned)
    print("\n" + markdown_table(rows))


def finished_runs(planned: list) -> dict:
    """version -> [(config, metrics)] for the runs that trained all the epochs this table asks for."""
    runs = {}
    for planned_cfg, run_dir in planned:
        if (run_dir / METRICS).exists() and (run_dir / CONFIG).exists():
            metrics = read_metrics(run_dir / METRICS)
            if len(metrics) == planned_cfg.epochs:
                runs.setdefault(planned_cfg.version, []).append((read_config(run_dir), metrics))
    return runs


def write_results(results_dir: Path, planned: list) -> list:
    rows, curves = [], {}
    for version, runs in finished_runs(planned).items():
        cfg, seed_row = runs[0][0], VERSIONS[version]
        tests = [metrics[-1]["test_acc"] for _, metrics in runs]
        test_acc = statistics.fmean(tests)
        dataset = cfg.dataset + (f" (folder: {Path(cfg.image_folder).name})" if cfg.image_folder else "")
        rows.append(dict(
            version=version, dataset=dataset, params=cfg.params, epochs=cfg.epochs, seeds=len(runs),
            train_acc=statistics.fmean(metrics[-1]["train_acc"] for _, metrics in runs), test_acc=test_acc,
            test_acc_std=statistics.stdev(tests) if len(tests) > 1 else None, seed_train_acc=seed_row.seed_train_acc,
            seed_test_acc=seed_row.seed_test_acc, test_delta=test_acc - seed_row.seed_test_acc,
            seconds=statistics.fmean(sum(row["seconds"] for row in metrics) for _, metrics in runs)))
        tested = [i for i, row in enumerate(runs[0][1]) if row["test_acc"] is not None]
        curves.setdefault(DATASETS[cfg.dataset].title, {})[f"v{version}"] = (
            [runs[0][1][i]["epoch"] for i in tested],
            [statistics.fmean(metrics[i]["test_acc"] for _, metrics in runs) for i in tested])
    lines = [",".join(RESULT_COLUMNS)]
    for row in rows:
        lines.append(",".join(format_value(row[name], csv=True) for name in RESULT_COLUMNS))
    (results_dir / "results.csv").write_text("\n".join(lines) + "\n")
    (results_dir / "results.md").write_text(markdown_table(rows) + "\n")
    if curves:
        plots.plot_results(curves, results_dir / "results.png")
    return rows


def format_value(value, csv: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if csv else f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"
    text = str(value)
    return f'"{text}"' if csv and "," in text else text


def markdown_table(rows: list) -> str:
    header = ("v", "dataset", "params", "epochs", "seeds", "train acc", "test acc (± std)", "seed's train / test",
              "test Δ", "seconds")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        test = format_value(row["test_acc"]) + (f" ± {row['test_acc_std']:.4f}" if row["test_acc_std"] else "")
        lines.append("| " + " | ".join([
            str(row["version"]), row["dataset"], f"{row['params']:,}", str(row["epochs"]), str(row["seeds"]),
            format_value(row["train_acc"]), test, f"{row['seed_train_acc']:.2f} / {row['seed_test_acc']:.2f}",
            f"{row['test_delta']:+.4f}", f"{row['seconds']:.0f}"]) + " |")
    return "\n".join(lines)
