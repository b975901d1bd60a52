"""`--set NAME=VALUE`: any recipe field or model argument from the command line, parsed by the field's type, and
sweeps over comma lists. Imports no torch, so a bad value is a usage error at once.

One written form per value, so that a value names its arm the same way however it was typed: numbers as Python
writes them (1e-3 and 0.001 are both 0.001), booleans true / false, lists of whole numbers joined by x (64x256x256),
since the comma sweeps.
"""
import difflib
import itertools
import math
from dataclasses import dataclass, fields, replace

from runner.settings import DATASETS, LARGEST_INT, MODEL_KINDS, TRANSFORM_KINDS, Recipe

# The recipe fields whose choice takes arguments of its own, set as PREFIX + argument: field -> (its arguments'
# field, the kinds by name). A change of the choice drops the arguments of the one before.
CHOSEN = {"model": ("model_args", MODEL_KINDS), "batch_transform": ("batch_transform_args", TRANSFORM_KINDS)}
NOT_SET_HERE = {arguments for arguments, _ in CHOSEN.values()}  # set argument by argument, as PREFIX + NAME


class SetError(ValueError):
    """A --set that cannot run; its message names the value and what to do."""


@dataclass(frozen=True)
class Setting:
    """What --set NAME takes: its type, choices and range."""

    name: str
    kind: type
    choices: tuple = ()
    range: object = None


def choices_of(name: str) -> tuple:
    """The values a text field takes; a registry's names are read now, since ladder files register more."""
    field_ = Recipe.__dataclass_fields__[name]
    if name in CHOSEN:
        return (*field_.metadata["choices"], *CHOSEN[name][1])
    return field_.metadata.get("choices", ())


def recipe_settings() -> dict:
    settable = {}
    for f in fields(Recipe):
        if f.name not in NOT_SET_HERE:
            settable[f.name] = Setting(f.name, f.type, choices_of(f.name), f.metadata.get("range"))
    return settable


def prefix_of(chosen: str) -> str:
    return chosen + "."


def argument_settings(chosen: str, name: str) -> dict:
    """What --set takes for the arguments of one model or batch transform (chosen: "model" or "batch_transform")."""
    prefix = prefix_of(chosen)
    return {prefix + argument: Setting(prefix + argument, kind, (), limits)
            for argument, (kind, limits, _) in CHOSEN[chosen][1][name].arguments.items()}


def model_settings(model: str) -> dict:
    return argument_settings("model", model)


def every_setting() -> dict:
    """Every name --set knows: the recipe's fields and the arguments of every model and batch transform (one
    argument name has one type and range in every one that takes it)."""
    settable = recipe_settings()
    for chosen, (_, kinds) in CHOSEN.items():
        for name in kinds:
            settable.update(argument_settings(chosen, name))
    return settable


def chosen_by(name: str) -> str | None:
    """The field whose choice a --set name is an argument of ("model" for model.width), or None."""
    return next((chosen for chosen in CHOSEN if name.startswith(prefix_of(chosen))), None)


def parse_value(setting: Setting, text: str):
    """One value of a setting from its written form; SetError says why not."""
    text = text.strip()
    where = f"--set {setting.name}={text}"
    if setting.kind is bool:
        if text not in ("true", "false"):
            raise SetError(f"{where}: give true or false")
        return text == "true"
    if setting.kind is list:
        parts = text.split("x")
        if not all(part.isdecimal() for part in parts):
            raise SetError(f"{where}: give whole numbers joined by x, e.g. 64x256x256")
        values = [int(part) for part in parts]
        if not all(setting.range.holds(value) and value <= LARGEST_INT for value in values):
            raise SetError(f"{where}: each number must be {setting.range}")
        return values
    if setting.kind is str:
        if setting.choices and text not in setting.choices:
            raise SetError(f"{where}: choose one of {', '.join(setting.choices)}")
        return text
    try:
        value = setting.kind(text)
    except ValueError:
        kind = "a whole number" if setting.kind is int else "a number"
        raise SetError(f"{where}: give {kind}") from None
    if not math.isfinite(value):
        raise SetError(f"{where}: give a finite number")
    if setting.range is not None and not setting.range.holds(value):
        raise SetError(f"{where}: must be {setting.range}")
    return value


def written(value) -> str:
    """The one written form of a parsed value (as in folder names)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "x".join(map(str, value))
    return repr(value) if isinstance(value, float) else str(value)


def parse_assignments(words: list) -> dict:
    """['lr=0.1,0.2', 'flip=random'] -> {'lr': [0.1, 0.2], 'flip': ['random']}: every name known (a model
    argument of some family), every value parsed by its type, each name once."""
    known, assignments = every_setting(), {}
    for word in words:
        name, equals, text = word.partition("=")
        name = name.strip()
        if not equals or not text.strip():
            raise SetError(f"--set {word}: give NAME=VALUE, e.g. --set weight_decay=1e-3 (see: python main.py fields)")
        if name not in known:
            closest = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {closest[0]}? " if closest else ""
            raise SetError(f"--set {word}: no field {name}; {hint}see: python main.py fields")
        if name in assignments:
            raise SetError(f"--set {name} is given twice: give its values as one comma list, e.g. {name}=a,b")
        values = [parse_value(known[name], part) for part in text.split(",")]
        if len({written(value) for value in values}) != len(values):
            raise SetError(f"--set {word}: a value repeats")
        assignments[name] = values
    return assignments


def check_settings(settings: dict, where: str) -> None:
    """Settings written as Python values (a ladder's ideas) must be ones --set could give: known names, and values
    of their types, choices and ranges (SetError otherwise)."""
    known = every_setting()
    for name, value in settings.items():
        if name not in known:
            closest = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {closest[0]}?" if closest else ""
            raise SetError(f"{where}: no field {name}{hint} (see: python main.py fields)")
        try:
            parse_value(known[name], written(value))
        except SetError as error:
            raise SetError(f"{where}: {error}".replace("--set ", "", 1)) from None


def grid(assignments: dict) -> list:
    """Every combination of the values, in the order given: [{'lr': 0.1, 'flip': 'random'}, ...]."""
    names = list(assignments)
    return [dict(zip(names, values)) for values in itertools.product(*(assignments[name] for name in names))]


def apply(recipe: Recipe, arm: dict) -> Recipe:
    """The recipe with an arm's settings; SetError when an argument is not one of its model's or transform's."""
    changes = {name: value for name, value in arm.items() if not chosen_by(name)}
    for chosen, (arguments_field, kinds) in CHOSEN.items():
        choice = arm.get(chosen, getattr(recipe, chosen))
        arguments = dict(getattr(recipe, arguments_field)) if choice == getattr(recipe, chosen) else {}
        prefix = prefix_of(chosen)
        for name, value in arm.items():
            if not name.startswith(prefix):
                continue
            argument = name[len(prefix):]
            known = kinds[choice].arguments if choice in kinds else {}
            if argument not in known:
                raise SetError(f"--set {name}: {chosen}={choice} has no argument {argument} (it takes "
                               f"{', '.join(known) or 'none'})")
            arguments[argument] = value
        changes[arguments_field] = arguments
    return replace(recipe, **changes)


def arm_recipe(base: Recipe, flags: dict, arm: dict) -> Recipe:
    """A version's recipe with the recipe flags given (--lr, --epochs, --batch-size) and an arm's settings."""
    return apply(replace(base, **flags), arm)


def check_recipe(recipe: Recipe, dataset: str, classic_loader: bool) -> None:
    """Combinations that cannot run, refused before any data is read (SetError)."""
    images, kind = DATASETS[dataset], MODEL_KINDS[recipe.model]
    if kind.takes is not None and kind.takes != (images.channels, images.size):
        channels, size = kind.takes
        raise SetError(f"model={recipe.model} takes {'grey' if channels == 1 else 'RGB'} {size}x{size} images, not "
                       f"{images.title}'s: choose a version on such images")
    for chosen, (arguments_field, kinds) in CHOSEN.items():
        choice = getattr(recipe, chosen)
        missing = [name for name in kinds[choice].required
                   if name not in getattr(recipe, arguments_field)] if choice in kinds else []
        if missing:
            raise SetError(f"{chosen}={choice} needs {' and '.join(prefix_of(chosen) + name for name in missing)}")
    if recipe.whitening and kind.takes is not None:
        raise SetError(f"whitening=true needs a model that takes any number of channels and pools its features "
                       f"globally (AirbenchNet); {recipe.model} does not")
    if recipe.early_size and (recipe.early_size >= images.size or not recipe.early_epochs):
        raise SetError(f"early_size={recipe.early_size}: give a size below the images' ({images.size}) and "
                       "early_epochs=N, the epochs trained at it")
    if recipe.early_epochs and not recipe.early_size:
        raise SetError(f"early_epochs={recipe.early_epochs} needs early_size=S, the size those epochs train at")
    if recipe.early_size and kind.takes is not None:
        raise SetError(f"early_size={recipe.early_size} needs a model that takes images of any size (AirbenchNet); "
                       f"{recipe.model} does not")
    if recipe.crop_padding >= images.size:
        raise SetError(f"crop_padding={recipe.crop_padding}: must be less than the images' size ({images.size})")
    if recipe.nesterov and (recipe.optimizer == "adam" or recipe.momentum == 0):
        raise SetError("nesterov=true needs optimizer=sgd (or muon, whose SGD part it is for) with a momentum above 0")
    if recipe.optimizer == "muon" and recipe.model == "MLP":
        raise SetError("optimizer=muon orthogonalises convolution filters, and model=MLP has none: choose a conv-net")
    if recipe.flip == "alternating" and classic_loader:
        raise SetError("flip=alternating needs the resident loader, not --loader torchvision")


def arm_words(arm: dict) -> list:
    """'name=value' for each setting of an arm, in the written form: its part of a folder name and of a table row."""
    return [f"{name}={written(value)}" for name, value in arm.items()]
