"""The runs a training command asks for, built from its checked words alone: no torch, no image decoded (an image
folder's files are listed, for its identity). commands.py trains them on its device; --dry-run (dry_run.py) prints
them with what their folders hold."""
import os
from collections.abc import Callable

from configs import VERSIONS
from ladder import SOURCE, folder_of
from runner import overrides
from runner.settings import Recipe, RunConfig, RunIdentity, Runtime, default_cache_dir, given
from runner.sources import DataSource, data_identity


def arm_bases(args) -> list:
    """(version, the recipe its --set arms start from, the ablation's idea) for each version asked for, or for
    each arm of an ablation."""
    if args.ablate:
        return [(arm.version, arm.recipe, arm.idea) for arm in args.ablation]
    return [(version, VERSIONS[version].recipe, "") for version in args.versions]


def writes_table(args) -> bool:
    """Several versions, --seeds, a sweep or an ablation write a results folder, even of one run."""
    return len(args.versions) > 1 or len(args.arms) > 1 or args.seeds is not None or args.ablate


def autocast_by_default(args, version: int) -> bool:
    """Whether the run trains in bfloat16 autocast where the device computes in it, unless --amp or --no-amp says:
    the version's own default; every arm of an ablation takes the ablated version's."""
    return args.ablation[0].autocast if args.ablate else VERSIONS[version].autocast


def run_config(version: int, args, seed: int, arm: dict, base: Recipe, idea: str, amp: bool | None,
               runtime: dict) -> RunConfig:
    """A version's run as the command line asks for it, in one arm of its --set settings, from `base` (the
    version's recipe, or an ablation arm's). amp: autocast as resolved for the device (None: left to the device, in
    a plan that looks none up); runtime: what the process knows of its place (device, threads, rank, world size)."""
    row, values = VERSIONS[version], vars(args)
    changes = given(Recipe, values)
    identity = dict(given(RunIdentity, values), seed=seed, amp=amp)
    folder = args.image_folder if version in args.folder_versions else folder_of(row.dataset)
    settings = Runtime(**{**given(Runtime, values), **runtime, "data_dir": os.path.abspath(args.data_dir or "data"),
                          "cache_dir": os.path.abspath(args.cache_dir or default_cache_dir()),
                          "image_folder": folder and os.path.abspath(folder)})
    source = DataSource(row.dataset, settings.data_dir, settings.image_folder, settings.cache_dir,
                        identity.get("resize", False), identity.get("holdout", 0))
    return RunConfig(version, row.dataset, overrides.arm_recipe(base, changes, arm),
                     RunIdentity(**identity, data=data_identity(source), ladder=dict(SOURCE)), settings,
                     {**changes, **arm, **given(RunIdentity, values)}, arm, idea)


def runs(args, amp: Callable[[bool], bool | None], runtime: dict) -> list[RunConfig]:
    """Every run the command asks for, in the order a table trains them: each version (or ablation arm), each arm of
    the --set grid, each seed. amp(the version's default) resolves its autocast; runtime as run_config takes it."""
    seeds = args.seeds or [args.seed or 0]
    return [run_config(version, args, seed, arm, recipe, idea, amp(autocast_by_default(args, version)), runtime)
            for version, recipe, idea in arm_bases(args) for arm in args.arms for seed in seeds]
