"""`python main.py ablate V`: the arms that test a row's ideas. V itself, V without each of its ideas (that idea's
settings back at the parent's values) and the parent; with `--add`, the parent and the parent with each idea alone.
Every arm trains for V's epochs, on V's dataset, in V's numerics (bfloat16 autocast by default where V has it, the
parent's arm too: numerics are no idea of the ladder). No torch here: an ablation is planned and checked before any data
is read."""
from dataclasses import dataclass, replace

from configs import VERSIONS
from runner.overrides import MODEL_PREFIX, SetError, apply
from runner.settings import Recipe


@dataclass(frozen=True)
class Arm:
    """One arm of an ablation: the version it runs as, its recipe, what it is ("" for a version's own) and whether
    it autocasts to bfloat16 by default (as the ablated version does, whichever version the arm runs as)."""

    version: int
    recipe: Recipe
    idea: str = ""
    autocast: bool = False


def check_ablatable(version: int) -> None:
    """SetError unless the version has a parent on its own dataset (ideas are only compared on the same data)."""
    row = VERSIONS[version]
    if row.parent is None:
        raise SetError(f"ablate {version}: version {version} is the first row of the ladder and has no parent to "
                       "compare with")
    parent = VERSIONS[row.parent]
    if parent.dataset != row.dataset:
        raise SetError(f"ablate {version}: version {version}'s parent, {parent.number}, trains on {parent.dataset} "
                       f"and {version} on {row.dataset}; a change of dataset is no idea. Ablate a version whose "
                       "parent has its dataset (3-5, 7-13)")


def moving_idea(version: int, name: str) -> str | None:
    """The idea of the version that moves the --set name, or None. An idea that changes the model moves all its
    arguments, and one that changes an argument moves the model (whose change would reset the arguments)."""
    for idea, settings in VERSIONS[version].ideas.items():
        arguments = any(setting.startswith(MODEL_PREFIX) for setting in settings)
        if name in settings or (name.startswith(MODEL_PREFIX) and "model" in settings) or (
                name == "model" and arguments):
            return idea
    return None


def without(version: int, idea: str) -> Recipe:
    """The version's recipe with one idea's settings back at its parent's values."""
    row = VERSIONS[version]
    recipe, parent = row.recipe, VERSIONS[row.parent].recipe
    model, model_args, changes = recipe.model, dict(recipe.model_args), {}
    for name in row.ideas[idea]:
        if name == "model":
            model, model_args = parent.model, dict(parent.model_args)
        elif name.startswith(MODEL_PREFIX):
            argument = name[len(MODEL_PREFIX):]
            if argument in parent.model_args:
                model_args[argument] = parent.model_args[argument]
            else:
                model_args.pop(argument, None)
        else:
            changes[name] = getattr(parent, name)
    return replace(recipe, model=model, model_args=model_args, **changes)


def plan(version: int, add: bool = False) -> list:
    """The arms of `ablate version` (with `add`, of `ablate version --add`), the one all others are compared with
    first; every arm trains for the version's epochs, in its numerics."""
    check_ablatable(version)
    row = VERSIONS[version]
    parent = Arm(row.parent, replace(VERSIONS[row.parent].recipe, epochs=row.recipe.epochs), "", row.autocast)
    if add:
        return [parent] + [Arm(row.parent, apply(parent.recipe, settings), f"with {idea}", row.autocast)
                           for idea, settings in row.ideas.items()]
    # A row of one idea without it is its parent, which is an arm already.
    return [Arm(version, row.recipe, "", row.autocast)] + [
        Arm(version, without(version, idea), f"without {idea}", row.autocast)
        for idea in row.ideas if without(version, idea) != parent.recipe] + [parent]
