"""`python main.py ablate V`: the arms that test a row's ideas. V itself, V without each of its ideas (that idea's
settings back at the parent's values) and the parent; with `--add`, the parent and the parent with each idea alone.
Every arm trains for V's epochs, but where an idea of V sets them: then the parent, V without that idea and, with
`--add`, the parent with each other idea train for the parent's. Every arm trains on V's dataset, in V's numerics
(bfloat16 autocast by default where V has it, the parent's arm too: numerics are no idea of the ladder). No torch
here: an ablation is planned and checked before any data is read."""
from dataclasses import dataclass, replace

from configs import VERSIONS
from ladder import Builtin, parent_row
from runner.overrides import CHOSEN, SetError, apply, chosen_by
from runner.settings import Recipe


@dataclass(frozen=True)
class Arm:
    """One arm of an ablation: the version it runs as, its recipe, what it is ("" for a version's own) and whether
    it autocasts to bfloat16 by default (as the ablated version does, whichever version the arm runs as)."""

    version: int
    recipe: Recipe
    idea: str = ""
    autocast: bool = False


def ablatable() -> str:
    """The versions ablate takes, as ranges ("3-5, 7-15"): those whose parent trains on their dataset."""
    numbers = [number for number, row in sorted(VERSIONS.items())
               if row.parent is not None and parent_row(row).dataset == row.dataset]
    spans = []
    for number in numbers:
        if spans and spans[-1][1] == number - 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(str(first) if first == last else f"{first}-{last}" for first, last in spans)


def check_ablatable(version: int) -> None:
    """SetError unless the version has a parent on its own dataset (ideas are only compared on the same data)."""
    row = VERSIONS[version]
    if row.parent is None:
        raise SetError(f"ablate {version}: version {version} is the first row of the ladder and has no parent to "
                       "compare with")
    parent = parent_row(row)
    if parent.dataset != row.dataset:
        raise SetError(f"ablate {version}: version {version}'s parent, {row.parent}, trains on {parent.dataset} "
                       f"and {version} on {row.dataset}; a change of dataset is no idea. Ablate a version whose "
                       f"parent has its dataset ({ablatable()})")


def moving_idea(version: int, name: str) -> str | None:
    """The idea of the version that moves the --set name, or None. An idea that changes the model (or batch
    transform) moves all its arguments, and one that changes an argument moves the model (whose change would reset
    the arguments)."""
    for idea, settings in VERSIONS[version].ideas.items():
        if name in settings or chosen_by(name) in settings or any(chosen_by(setting) == name for setting in settings):
            return idea
    return None


def without(version: int, idea: str) -> Recipe:
    """The version's recipe with one idea's settings back at its parent's values."""
    row = VERSIONS[version]
    recipe, parent = row.recipe, parent_row(row).recipe
    changes = {arguments: dict(getattr(recipe, arguments)) for arguments, _ in CHOSEN.values()}
    for name in row.ideas[idea]:
        chosen = chosen_by(name)
        if name in CHOSEN:
            changes[name] = getattr(parent, name)
            changes[CHOSEN[name][0]] = dict(getattr(parent, CHOSEN[name][0]))
        elif chosen:
            arguments, argument = CHOSEN[chosen][0], name[len(chosen) + 1:]
            if argument in getattr(parent, arguments):
                changes[arguments][argument] = getattr(parent, arguments)[argument]
            else:
                changes[arguments].pop(argument, None)
        else:
            changes[name] = getattr(parent, name)
    return replace(recipe, **changes)


def plan(version: int, add: bool = False) -> list:
    """The arms of `ablate version` (with `add`, of `ablate version --add`), the one all others are compared with
    first; every arm trains for the version's epochs (where an idea sets them, the parent and every arm without that
    idea: the parent's), in its numerics."""
    check_ablatable(version)
    row = VERSIONS[version]
    # a built-in parent of a ladder file's row runs as that row, named for what it is
    parent = Arm(version, parent_row(row).recipe, str(row.parent), row.autocast) if isinstance(row.parent, Builtin) \
        else Arm(row.parent, VERSIONS[row.parent].recipe, "", row.autocast)
    # where an idea of V sets the epochs, the parent trains as it is: that idea is one of what it lacks
    if moving_idea(version, "epochs") is None:
        parent = replace(parent, recipe=replace(parent.recipe, epochs=row.recipe.epochs))
    if add:
        return [parent] + [Arm(parent.version, apply(parent.recipe, settings), f"with {idea}", row.autocast)
                           for idea, settings in row.ideas.items()]
    # A row of one idea without it is its parent, which is an arm already.
    return [Arm(version, row.recipe, "", row.autocast)] + [
        Arm(version, without(version, idea), f"without {idea}", row.autocast)
        for idea in row.ideas if without(version, idea) != parent.recipe] + [parent]
