"""Several runs as one table: a results folder with a run folder per arm (a version, with its ablation idea and
--set settings) and seed, and results.md, .csv and .png. Running the same command again skips finished runs and
resumes unfinished ones; each run's row comes from its checkpoint's metrics, cut to the epochs the table asks for."""
import statistics
import time
from datetime import datetime
from pathlib import Path

from configs import VERSIONS
from runner import claims
from runner.console import STOP
from runner.distributed import say
from runner.errors import CheckpointError, RunnerError
from runner.overrides import apply, arm_words
from runner.placement import arm_label, foreign_entry, match_folders, run_differences
from runner.files import atomic_write, write_text
from runner.records import CHECKPOINT, CONFIG, FAILED, RunFolder
from runner.settings import DATASETS, RunConfig

FAIL_FAST = ".fail-fast"  # a run failed under --fail-fast: every copy started with it stops
# After the twelve: the arm, why a row lacks runs, the held-out accuracy (--holdout), then the statistics of the
# accuracy compared (test, or val under --holdout): its 95% interval and the row's difference with another row.
ADDED_COLUMNS = ["status", "arm", "val_acc", "val_acc_std", "acc_low", "acc_high", "compared_with", "difference",
                 "difference_low", "difference_high", "paired_seeds", "p_value", "p_holm", "significant"]
RUN_COLUMNS = ["version", "arm", "seed", "train_acc", "test_acc", "val_acc", "seconds", "status", "folder"]
RESULT_COLUMNS = ["version", "dataset", "params", "epochs", "seeds", "train_acc", "test_acc", "test_acc_std",
                  "ref_train_acc", "ref_test_acc", "test_delta", "seconds"]


def arm_text(run: RunConfig) -> str:
    """The run's ablation idea and --set settings as the tables show them: "without lookahead", "lr=0.1
    weight_decay=0.001" ('' for a version's own)."""
    return " ".join([run.idea, *arm_words(run.arm)]).strip()


def describe(run: RunConfig) -> str:
    return f"Version {run.version}" + (f" ({arm_text(run)})" if arm_text(run) else "") + \
        f", seed {run.identity.seed}"


def prepare_results_folder(path: Path) -> None:
    """A results folder is new, empty, or holds only run folders of ours and results files; anything else is
    refused before anything is written."""
    if path.exists():
        foreign = foreign_entry(path)
        if foreign:
            raise RunnerError(f"{path} is not a results folder (it holds {foreign}, which no run of this tool "
                              "wrote): give --out a new or empty folder (nothing in it was changed)")
    else:
        path.mkdir(parents=True, exist_ok=True)  # a copy started at the same instant may make it between the two


def ladder_name(source: dict) -> str:
    return f"the ladder file {source['file']} (SHA-256 {source['sha256'][:12]})" if source else "the built-in ladder"


def check_same_run(folder: RunFolder, planned: RunConfig) -> None:
    """A run folder of the table must hold the run the table asks for."""
    changes = run_differences(folder.read_config(), planned)
    if changes:
        name, theirs, ours = changes[0]
        if name == "ladder":
            raise RunnerError(f"{folder.path} was trained on {ladder_name(theirs)}, this command runs "
                              f"{ladder_name(ours)}: give the file it was trained with, unchanged, or use another "
                              "--out")
        why = {"epochs": " (its schedule spans the epochs it was trained with)",
               "amp": f" (bfloat16 autocast; give {'--amp' if theirs else '--no-amp'} to continue its folder)"}
        raise RunnerError(f"{folder.path} was trained with {name}={theirs!r}{why.get(name, '')}, this command asks "
                          f"{ours!r}: use another --out, or --force to start over")


def place_runs(results_dir: Path, runs: list, seeds_given: bool, force: bool = False,
               lease: float = claims.DEFAULT_LEASE, retry_failed: bool = False) -> list:
    """Each planned run's folder (as a path), as placement.match_folders finds it. A run folder that holds another
    run of the same name refuses the command before anything changes (with force: everything starts over, once no
    process trains any of them; with retry_failed, runs that failed for good are tried again). Every planned folder
    then holds its run's config.json, so that other copies of the command and `status` see the whole table."""
    folders = match_folders(results_dir, runs, seeds_given)
    if force:
        start_over(folders, runs, lease)
    for run, folder in zip(runs, folders):
        if (folder / CONFIG).exists():
            check_same_run(folder, run)
    for run, folder in zip(runs, folders):
        if not (folder / CONFIG).exists():
            folder.path.mkdir(exist_ok=True)
            folder.write_config(run)
        if retry_failed and folder.failure() is not None:
            if folder.has_checkpoint() and damaged(folder):
                (folder / CHECKPOINT).unlink()  # the retry trains it from its start
            (folder / FAILED).unlink(missing_ok=True)
    if retry_failed:
        (results_dir / FAIL_FAST).unlink(missing_ok=True)  # the failure it marks is being retried
    return [str(folder.path) for folder in folders]


def damaged(folder: RunFolder) -> bool:
    try:
        folder.load_checkpoint()
    except CheckpointError:
        return True
    return False


def start_over(folders: list, runs: list, lease: float) -> None:
    """--force: clear every planned run folder and write its run's config.json, while this process holds each
    one's claim, so that no copy trains one meanwhile. A live claim is waited for up to its lease (the longest of
    those met); one whose owner died is taken over, as any copy would."""
    watcher, held, pending = claims.Watcher(lease), [], list(folders)
    deadline = None
    try:
        while True:
            for folder in list(pending):
                claim = watcher.take(folder.path)
                if claim:
                    held.append(claim)
                    pending.remove(folder)
            live = watcher.live([folder.path for folder in pending])
            if not pending:
                break
            if live:
                longest = max(watcher.lease_for(record) for _, record in live)
                if deadline is None:
                    say(f"--force: {len(live)} run(s) are claimed; watching their heartbeats for up to {longest:g} s")
                    deadline = time.monotonic() + longest + 2 * claims.poll_interval(longest)
                if time.monotonic() > deadline:
                    path, record = live[0]
                    raise RunnerError(f"--force: {path} is being trained by {claims.owner_text(record)}: stop that "
                                      "copy first, or run without --force (nothing was changed)")
            STOP.check()
            time.sleep(claims.poll_interval(lease))
        for folder, run in zip(folders, runs):
            folder.clear(keep_config=True)
            folder.write_config(run)
    finally:
        for claim in held:
            claim.release()


def claim_run(folder: Path, lease: float) -> claims.Claim:
    """This process's claim on a run it trains outside a table (one version, or --resume): at once when the run is
    free or its owner certainly gone; after the owner's lease when its heartbeat stands still meanwhile; a beating
    owner refuses the command, naming it."""
    watcher = claims.Watcher(lease)
    claim, first = watcher.take(folder), None
    while claim is None:
        record = claims.read_claim(folder)
        if record is not None:
            key = (record.get("token"), record.get("beat"))
            if first is not None and key != first or claims.owner_alive(record):
                raise RunnerError(f"{folder} is being trained by {claims.owner_text(record)}: let that copy finish "
                                  f"(see: python main.py status {folder.parent}), or stop it first")
            if first is None:
                first = key
                until = datetime.fromtimestamp(watcher.stale_at(folder, record))
                say(f"{folder} is claimed by {claims.owner_text(record)}; waiting for its heartbeat: it is taken over "
                    f"at {until:%H:%M:%S} if it stands still until then")
        STOP.check()
        time.sleep(claims.poll_interval(watcher.lease_for(record)))
        claim = watcher.take(folder)
    return claim


class TableStopped(RunnerError):
    """Another copy's run failed under --fail-fast: this copy stops too (its own run is not at fault)."""

    permanent = False


def run_table(results_dir: Path, planned: list, train, after_each_run=None, fail_fast: bool = False,
              lease: float = claims.DEFAULT_LEASE) -> list:
    """Train, with train(run, folder, resume), every planned (RunConfig, RunFolder) that is neither finished nor
    failed, one at a time, each under this process's claim, so that any number of processes on the folder train
    each run once. A run that fails for good is recorded as failed in its folder and the others go on (with
    fail_fast, a mark in the results folder stops every copy started with it). With nothing left to take, the
    other processes' claims are watched for a lease and taken over when their owner died. Returns the claims still
    live then (folder, record): the runs other processes are training."""
    watcher, settled = claims.Watcher(lease), set()
    mark = results_dir / FAIL_FAST  # only --retry-failed removes it (place_runs): a copy without --fail-fast ignores it
    while True:
        trained = False
        for run, folder in planned:
            if folder.path in settled:
                continue
            if fail_fast:
                check_fail_fast(mark)
            # a finished run needs no claim (a stale one on it is ignored); metrics.csv tells it without loading
            # the checkpoint of every run other processes are training, on every pass
            ended = ended_before(run, folder) if folder.has_ended(run.recipe.epochs) else None
            if not ended:
                claim = watcher.take(folder.path)
                if claim is None:
                    continue
                try:
                    ended = ended_before(run, folder)  # it may have ended before this process's claim
                    if not ended:
                        trained = True
                        if train_claimed(run, folder, claim, train, mark if fail_fast else None):
                            settled.add(folder.path)
                        if after_each_run:
                            after_each_run()
                finally:
                    claim.release()
            if ended:
                settled.add(folder.path)
                say(f"{describe(run)}: {ended}; skipped")
        if trained:
            continue
        elsewhere = [folder.path for _, folder in planned if folder.path not in settled]
        if not elsewhere:
            return []
        live = watch(watcher, elsewhere, lease)
        if len(live) == len(elsewhere):
            return live


def watch(watcher: claims.Watcher, folders: list, lease: float) -> list:
    """Watch the claims on folders, saying what for, until one is released or lapses, or for the longest lease among
    them; the live ones then."""
    live = watcher.live(folders)
    if len(live) == len(folders):
        folder, record = live[0]
        until = datetime.fromtimestamp(max(watcher.stale_at(path, claim) for path, claim in live))
        say(f"Waiting for {len(live)} run(s) other copies train (first: {folder}, by {claims.owner_text(record)}); "
            f"a run whose owner's heartbeat stands still until {until:%H:%M:%S} is taken over then")
    deadline = time.monotonic() + max([lease, *(watcher.lease_for(record) for _, record in live)])
    while len(live) == len(folders) and time.monotonic() < deadline:
        STOP.check()
        time.sleep(claims.poll_interval(lease))
        live = watcher.live(folders)
    return live


def ended_before(run: RunConfig, folder: RunFolder) -> str | None:
    """Why a run needs no training (it failed for good, or has its epochs), or None. A checkpoint that cannot be
    loaded fails that run alone, recorded with the way to train it again. Without the run's claim it is called only
    where metrics.csv holds every epoch, so that catching metrics.csv up happens under the claim."""
    failure = folder.failure()
    if failure:
        return f"failed earlier ({failure}; --retry-failed tries it again)"
    try:
        done = 0
        if folder.has_checkpoint():
            checkpoint = folder.load_checkpoint()
            folder.catch_up_metrics(checkpoint)
            done = int(checkpoint["epoch"])
    except CheckpointError:
        folder.record_failure(f"its {CHECKPOINT} is damaged or not this tool's, so the run cannot go on from it; "
                              "--retry-failed trains this run again from its start, the table's other runs kept")
        return f"failed: {folder.failure()}"
    return f"finished ({done} epochs) in {folder.path}" if done >= run.recipe.epochs else None


def train_claimed(run: RunConfig, folder: RunFolder, claim: claims.Claim, train, mark: Path | None) -> bool:
    """Train a run this process holds the claim of; True when it ended (trained, or failed for good), False when
    another process took it over. Before each checkpoint, the claim (and the --fail-fast mark) is checked."""
    done = folder.epochs_done()
    if not done:
        folder.clear(keep_config=True)
        folder.write_config(run)
    say(f"\n== {describe(run)}: {DATASETS[run.dataset].title}, {run.recipe.model} "
        f"({'resuming after epoch ' + str(done) if done else 'new'}) -> {folder.path}")

    def guard():
        claim.check()
        if mark:
            check_fail_fast(mark)

    folder.guard = guard
    try:
        try:
            train(run, folder, done > 0)
        except OSError:
            claim.check()  # taken over meanwhile, its folder may have been cleared under it: the loss is the news
            raise
    except claims.ClaimLost as lost:
        say(f"{describe(run)}: {lost}")
        return False
    except RunnerError as error:
        if not error.permanent:
            raise
        folder.record_failure(str(error))
        if mark:
            write_text(mark, f"{describe(run)} failed: {error}\n")
            raise
        say(f"{describe(run)} failed: {error}")
    finally:
        folder.guard = None
    return True


def check_fail_fast(mark: Path) -> None:
    try:
        why = mark.read_text().strip()
    except FileNotFoundError:
        return
    raise TableStopped(f"{why}; with --fail-fast every copy stops (run the command without --fail-fast to go on "
                       "with the other runs)")


def publish(results_dir: Path, planned: list, baseline: RunConfig | None = None) -> list:
    """write_results, written again while runs ended meanwhile (other processes finish runs at any time), so that
    the last writer never leaves a finished run out."""
    while True:
        before = [folder.has_ended(run.recipe.epochs) for run, folder in planned]
        rows = write_results(results_dir, planned, baseline)
        if [folder.has_ended(run.recipe.epochs) for run, folder in planned] == before:
            return rows


def report(results_dir: Path, planned: list, whole_split_command=None, baseline: RunConfig | None = None) -> list:
    """Write results.md, .csv and .png and print the table; returns its rows. With whole_split_command (a sweep
    on held-out images), also which row is best there and the command that trains it on the whole training split
    and tests it. A planned run without a result at the table's epochs is a failure (RunnerError) naming it,
    after the table that shows why in its status. baseline: the arm every other is compared with (an ablation)."""
    rows = publish(results_dir, planned, baseline)
    print("\n" + markdown_table(rows))
    scored = [row for row in rows if row["acc"] is not None]
    if whole_split_command and scored:
        best = max(scored, key=lambda row: row["acc"])
        print(f"\nBest on the held-out images: {best['label']} ({best['acc']:.4f}). Picked from these runs, its "
              f"lead needs a confirming run: train it on the whole training split and test it:\n"
              f"  {whole_split_command(best)}")
    missing = [row for row in rows if row["status"] != "ok"]
    if missing:
        raise RunnerError(f"{len(missing)} of {len(rows)} rows of {results_dir / 'results.csv'} lack runs: "
                          f"{missing[0]['label']}: {missing[0]['status']} (its status column says why)")
    return rows


def run_summary(folder: RunFolder, epochs: int, split: str = "test") -> tuple[dict | None, str]:
    """A run's numbers at the table's epoch count, from its checkpoint: train accuracy of that epoch, and as `acc`
    the accuracy on `split` (test, or val under --holdout) of its last tested epoch up to it (the final
    test-time-augmented one when the run ended there). With them "ok"; without (None), why not."""
    failure = folder.failure()
    if failure:
        return None, f"failed: {failure}"
    if not folder.has_checkpoint():
        return None, "not trained yet"
    try:
        metrics = folder.load_checkpoint()["metrics"]
    except CheckpointError:  # a table written before this run's turn came: its turn records it failed
        return None, f"its {CHECKPOINT} is damaged or not this tool's (the run is recorded failed when its turn comes)"
    if len(metrics) < epochs:
        return None, f"trained {len(metrics)} of {epochs} epochs"
    key = f"{split}_acc"
    tested = [row for row in metrics[:epochs] if row.get(key) is not None]
    if not tested:
        every = ", ".join(str(row["epoch"]) for row in metrics if row.get(key) is not None)
        return None, f"not tested by epoch {epochs} (tested after epochs {every})"
    last = tested[-1]
    final = last["epoch"] == epochs and f"final_{key}" in last
    return dict(train_acc=metrics[epochs - 1]["train_acc"], acc=last[f"final_{key}"] if final else last[key],
                seconds=sum(row["seconds"] for row in metrics[:epochs]) + (
                    last[f"final_{split}_seconds"] if final else 0),
                curve={row["epoch"]: row[key] for row in tested}), "ok"


def write_results(results_dir: Path, planned: list, baseline: RunConfig | None = None) -> list:
    """A row per arm planned (a version, with its --set settings), from the runs that have a result at the table's
    epochs; `status` says "ok" or which runs have none and why, so a row is never left out silently."""
    runs, run_lines = {}, [",".join(RUN_COLUMNS)]
    split = planned[0][0].identity.evaluated  # one for the whole table: --holdout is the command's
    for run, folder in planned:
        summary, status = run_summary(folder, run.recipe.epochs, split)
        runs.setdefault(arm_label(run), []).append((run, folder, summary, status))
        line = dict(summary or {}, version=run.version, arm=arm_text(run), seed=run.identity.seed,
                    status=status, folder=folder.path.name)
        line[f"{split}_acc"] = line.get("acc")
        run_lines.append(",".join(format_value(line.get(name), csv=True) for name in RUN_COLUMNS))
    rows, curves = [], {}
    for outcomes in runs.values():
        run = outcomes[0][0]
        label = f"v{run.version} {arm_text(run)}".rstrip()  # the row's name in the tables
        reference = VERSIONS[run.version].reference if not arm_text(run) and split == "test" else None
        summaries = [summary for _, _, summary, _ in outcomes if summary]
        missing = [f"seed {other.identity.seed}: {status}" for other, _, summary, status in outcomes if not summary]
        accuracies = [summary["acc"] for summary in summaries]
        folder_name = run.runtime.image_folder and Path(run.runtime.image_folder).name
        mean = statistics.fmean(accuracies) if accuracies else None
        std = statistics.stdev(accuracies) if len(accuracies) > 1 else None
        rows.append(dict(
            label=label, per_seed={other.identity.seed: summary["acc"] for other, _, summary, _ in outcomes
                                   if summary},
            version=run.version, dataset=run.dataset + (f" (folder: {folder_name})" if folder_name else ""),
            params=parameter_count(run, [folder for _, folder, _, _ in outcomes]), epochs=run.recipe.epochs,
            seeds=len(summaries),
            train_acc=statistics.fmean(summary["train_acc"] for summary in summaries) if summaries else None,
            acc=mean, acc_std=std, split=split, **{f"{split}_acc": mean, f"{split}_acc_std": std},
            ref_train_acc=reference[0] if reference else None, ref_test_acc=reference[1] if reference else None,
            test_delta=mean - reference[1] if reference and accuracies else None,
            reference_source=VERSIONS[run.version].reference_source,
            seconds=statistics.fmean(summary["seconds"] for summary in summaries) if summaries else None,
            status="; ".join(missing) or "ok", arm=arm_text(run), settings=run.arm,
            baseline=baseline is not None and arm_label(run) == arm_label(baseline)))
        if summaries:
            epochs = sorted({epoch for summary in summaries for epoch in summary["curve"]})
            curves.setdefault(DATASETS[run.dataset].title, {})[label] = (epochs, [
                statistics.fmean(summary["curve"][epoch] for summary in summaries if epoch in summary["curve"])
                for epoch in epochs])
    compared = compare_rows(rows)
    columns = RESULT_COLUMNS + ADDED_COLUMNS
    lines = [",".join(columns)] + [",".join(format_value(row.get(name), csv=True) for name in columns) for row in rows]
    write_text(results_dir / "results.csv", "\n".join(lines) + "\n")
    write_text(results_dir / "results.md", markdown_table(rows) + "\n")
    write_text(results_dir / "runs.csv", "\n".join(run_lines) + "\n")
    from runner import plots

    if curves:
        atomic_write(results_dir / "results.png", lambda f: plots.save(plots.results_figure(curves, split), f))
    if compared:
        atomic_write(results_dir / "differences.png", lambda f: plots.save(plots.differences_figure(
            [(f"{row['label']} - {row['compared_with']}", row["difference"], row["difference_low"],
              row["difference_high"]) for row in compared]), f))
    else:
        (results_dir / "differences.png").unlink(missing_ok=True)  # a grown table may have nothing to compare now
    return rows


def sweep_baselines(rows: list) -> dict:
    """In a sweep (rows with --set arms, not an ablation), each version's baseline row, fixed before any result:
    the arm that holds the version's own recipe where the grid has it, else the grid's first arm (rows are in the
    grid's order). Comparing with the best arm instead, picked from the same runs, would claim differences between
    equal arms more often than 5%. Empty for other tables."""
    if any(row["baseline"] for row in rows) or not any(row["arm"] for row in rows):
        return {}
    baselines = {}
    for version in dict.fromkeys(row["version"] for row in rows):
        arms, recipe = [row for row in rows if row["version"] == version], VERSIONS[version].recipe
        baselines[version] = next((row for row in arms if apply(recipe, row["settings"]) == recipe), arms[0])
    return baselines


def comparison_pairs(rows: list) -> list:
    """(row, the row it is compared with): in an ablation, each arm against its baseline row; in a sweep, each arm
    against its version's baseline (sweep_baselines); in a ladder table, each version against the one before it in
    the table on the same dataset."""
    scored = [row for row in rows if row["acc"] is not None]
    if any(row["baseline"] for row in rows):
        return [(row, base) for base in scored if base["baseline"] for row in scored if row is not base]
    baselines = sweep_baselines(rows)
    if baselines:
        return [(row, baselines[row["version"]]) for row in scored
                if row is not baselines[row["version"]] and baselines[row["version"]]["acc"] is not None]
    return [(row, previous) for index, row in enumerate(scored)
            for previous in [next((other for other in reversed(scored[:index]) if other["dataset"] == row["dataset"]),
                                  None)] if previous]


def compare_rows(rows: list) -> list:
    """Fill each row's interval of its mean and its comparison (difference, interval, p-values with Holm's
    correction over the table); returns the rows compared. Nothing without two seeds on a row."""
    if not any(len(row["per_seed"]) > 1 for row in rows):
        return []
    from runner import comparisons

    for row in rows:
        interval = comparisons.interval_of_mean(list(row["per_seed"].values()))
        if interval:
            row["acc_low"], row["acc_high"] = interval
    compared = []
    for row, other in comparison_pairs(rows):
        result = comparisons.paired_difference(row["per_seed"], other["per_seed"])
        if result:
            row.update(compared_with=other["label"], difference=result["difference"], difference_low=result["low"],
                       difference_high=result["high"], paired_seeds=result["pairs"], p_value=result["p"],
                       spread=result["spread"])
            compared.append(row)
    tested = [row for row in compared if row["p_value"] is not None]
    for row, adjusted in zip(tested, comparisons.holm([row["p_value"] for row in tested])):
        row.update(p_holm=adjusted, significant="yes" if adjusted < comparisons.ALPHA else "no")
    seeds = comparisons.seeds_to_resolve([dict(difference=row["difference"], spread=row["spread"])
                                          for row in compared])
    baselines = [row["label"] for row in sweep_baselines(rows).values()]
    for row in rows:
        row.update(seeds_needed=seeds, sweep_baselines=baselines)
    return compared


def parameter_count(run: RunConfig, folders: list) -> int | None:
    """The version's count where its row gives one, else what its runs counted (None before any ran)."""
    if not arm_text(run) and VERSIONS[run.version].params:
        return VERSIONS[run.version].params
    for folder in folders:
        if (folder / "config.json").exists():
            return folder.read_record().get("params")
    return None


def format_value(value, csv: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if csv else f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"
    text = str(value)
    return f'"{text}"' if csv and "," in text else text


def markdown_table(rows: list) -> str:
    split = rows[0]["split"] if rows else "test"
    header = ("v", "dataset", "params", "epochs", "seeds", "train acc", f"{split} acc (± std)",
              "reference train / test", "test Δ", "seconds")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        test = format_value(row["acc"]) + (f" ± {row['acc_std']:.4f}" if row["acc_std"] else "")
        reference = "" if row["ref_test_acc"] is None else \
            f"{row['ref_train_acc']:.2f} / {row['ref_test_acc']:.2f}" + (
                "" if row["reference_source"] == "seed" else f" ({row['reference_source']})")
        delta = "" if row["test_delta"] is None else f"{row['test_delta']:+.4f}"
        lines.append("| " + " | ".join([
            row["label"][1:], row["dataset"], "" if row["params"] is None else f"{row['params']:,}",
            str(row["epochs"]), str(row["seeds"]),
            format_value(row["train_acc"]), test, reference, delta,
            "" if row["seconds"] is None else f"{row['seconds']:.0f}"]) + " |")
    notes = [f"{row['label']} lacks runs: {row['status']}" for row in rows if row["status"] != "ok"]
    return "\n".join(lines + ([""] + notes if notes else []) + statistics_lines(rows))


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def statistics_lines(rows: list) -> list:
    """Under the table: each row's 95% interval and each comparison, or why there are none."""
    if not any(len(row["per_seed"]) > 1 for row in rows):
        return ["", "One seed per row: no interval or difference is claimed (several seeds give them, e.g. "
                    "--seeds 0-4)."]
    lines = ["", f"| row | seeds | mean {rows[0]['split']} acc (95% interval) |", "|---|---|---|"]
    lines += [f"| {row['label']} | {len(row['per_seed'])} | {row['acc']:.4f}"
              + (f" [{row['acc_low']:.4f}, {row['acc_high']:.4f}]" if "acc_low" in row else "") + " |"
              for row in rows if row["acc"] is not None]
    compared = [row for row in rows if "difference" in row]
    if compared:
        lines += ["", "| comparison | difference (95% interval, paired) | seeds paired | p | p (Holm) | significant |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {row['label']} - {row['compared_with']} | {row['difference']:+.4f} "
                  f"[{row['difference_low']:+.4f}, {row['difference_high']:+.4f}] | {row['paired_seeds']} | "
                  f"{number(row['p_value'])} | "
                  f"{number(row.get('p_holm'))} | {row.get('significant', 'no test: no spread')} |"
                  for row in compared]
        if rows[0].get("sweep_baselines"):
            lines += ["", f"Baseline{'s' if len(rows[0]['sweep_baselines']) > 1 else ''}, fixed before the runs (the "
                          "version's own recipe where the sweep holds it, else the sweep's first arm): "
                          f"{', '.join(rows[0]['sweep_baselines'])}. The best arm, picked from these same runs, needs "
                          "a confirming run (new seeds, or the whole training split after --holdout) before its "
                          "lead is claimed."]
        if rows[0].get("seeds_needed"):
            lines += ["", f"Seeds to resolve the smallest difference seen (paired t-test at 5%, 80% power): about "
                          f"{rows[0]['seeds_needed']}."]
    return lines
