"""Which folder of a results folder holds which run of a table: the names run folders get, and the matching of
planned runs to the folders whose config.json holds them. It reads and never writes, and imports no torch, so
that placing a table's runs (results.place_runs, which then writes) and --dry-run (which writes nothing) find the
same folders."""
import hashlib
from dataclasses import replace
from pathlib import Path

from runner.errors import CheckpointError
from runner.overrides import arm_words
from runner.records import RunFolder
from runner.settings import RunConfig, differences

RESULT_FILES = ("results.md", "results.csv", "results.png", "runs.csv", "differences.png")
NAME_LIMIT = 120  # characters of a run folder's name: file systems refuse names past 255 bytes
STAMP = len("-YYYYmmdd-HHMMSS-99")  # what RunFolder.new adds to a single run's name


def shortened(name: str, limit: int) -> str:
    """The name itself when it has at most `limit` characters, else a readable prefix and an 8-hex hash of the
    whole name, which keeps long names of different arms apart."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:limit - len(digest) - 1].rstrip('-')}-{digest}"


def full_label(run: RunConfig) -> str:
    """The run's version, ablation idea and --set settings, however long: v9-lr=0.1-weight_decay=0.001,
    v13-without-lookahead."""
    return "-".join([f"v{run.version}", *run.idea.split(), *arm_words(run.arm)])


def arm_label(run: RunConfig) -> str:
    """The arm's name, as a single run's folder begins (RunFolder.new adds the time): its full label, shortened to
    leave that folder name within NAME_LIMIT."""
    return shortened(full_label(run), NAME_LIMIT - STAMP)


def run_name(run: RunConfig, seeds_given: bool) -> str:
    """A table's run folder name, within NAME_LIMIT: the arm's full label (shortened when long) and its seed. The
    folder's config.json, not this name, tells which run it holds."""
    seed = f"-seed{run.identity.seed}" if seeds_given else ""
    return shortened(full_label(run), NAME_LIMIT - len(seed)) + seed


def run_differences(stored: RunConfig, planned: RunConfig) -> list:
    """(name, stored, planned) for what makes a stored run another than the planned one: version, recipe (epochs
    aside, unless a schedule spans them) and identity. A planned run's autocast left None (a dry run, which looks up
    no device to decide it) matches either."""
    changes = differences(replace(stored.recipe, epochs=planned.recipe.epochs), planned.recipe) + \
        differences(stored.identity, planned.identity)
    if planned.identity.amp is None:
        changes = [change for change in changes if change[0] != "amp"]
    if stored.version != planned.version:
        changes.insert(0, ("version", stored.version, planned.version))
    if planned.fixed_length and planned.recipe.epochs != stored.recipe.epochs:
        changes.append(("epochs", stored.recipe.epochs, planned.recipe.epochs))
    return changes


def stored_runs(results_dir: Path) -> list:
    """(folder path, RunConfig) of every run folder of ours in results_dir; one with a damaged config.json is
    nobody's match."""
    stored = []
    for entry in sorted(results_dir.iterdir()) if results_dir.is_dir() else []:
        folder = RunFolder(entry)
        if entry.is_dir() and folder.is_ours():
            try:
                stored.append((entry, folder.read_config()))
            except CheckpointError:
                continue
    return stored


def match_folders(results_dir: Path, runs: list, seeds_given: bool) -> list:
    """Each planned run's RunFolder: the one in results_dir whose config.json holds that very run, so a grown grid
    or an added seed never retrains what exists, whatever its folder is called; else the one named for it (which
    may not exist yet, or may hold another run)."""
    stored = stored_runs(results_dir)
    placed = [None] * len(runs)
    # First the runs trained for just as many epochs, then those that count cut to fewer (an epochs sweep must not
    # take its arms' folders for each other).
    for exact in (True, False):
        for index, run in enumerate(runs):
            if placed[index] is None:
                placed[index] = next((path for path, config in stored if path not in placed
                                      and not run_differences(config, run)
                                      and (config.recipe.epochs == run.recipe.epochs or not exact)), None)
    return [RunFolder(path or results_dir / run_name(run, seeds_given)) for path, run in zip(placed, runs)]


def foreign_entry(results_dir: Path) -> str | None:
    """The first entry of an existing results folder that no run of this tool wrote (a table refuses the folder),
    or None."""
    return next((entry.name for entry in sorted(results_dir.iterdir()) if not (
        entry.name in RESULT_FILES or entry.name.startswith(".")
        or (entry.is_dir() and (RunFolder(entry).is_ours() or RunFolder(entry).is_unstarted())))), None)
