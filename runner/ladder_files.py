"""`--ladder FILE`: a user's ladder file run in place of the built-in ladder, and the checks that make a mistake in
it one line before any data is read.

A ladder file is code: it is run only when a command line names it, never because a run folder recorded its path.
Its absolute path and SHA-256 go into every run's identity (ladder.SOURCE), so that a results folder, a copy or a
resumed run refuses a file that changed since."""
import hashlib
import math
import sys
import traceback
import types
from pathlib import Path

import configs  # noqa: F401  (the built-in rows, which a file's rows may grow from)
import ladder
from ladder import BUILT_IN, VERSIONS, LadderError
from runner.settings import DATASETS, REGISTERED, Recipe, Version

DUMMY_BATCH = 2
TFLOP_TOLERANCE = 0.01  # a row's stored figure may be rounded to three digits


def error_line(path: Path, error: BaseException) -> str:
    """The file and line where running the ladder file failed, with its error."""
    if isinstance(error, SyntaxError) and error.filename == str(path):
        return f"{path}:{error.lineno}: {error.msg}"
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__) if frame.filename == str(path)]
    where = f"{path}:{lines[-1]}" if lines else str(path)
    text = str(error) if isinstance(error, LadderError) else f"{type(error).__name__}: {error}"
    return f"{where}: {text}"


def load(file: str) -> None:
    """Run the ladder file and make its rows the ones this process runs (LadderError: what is wrong, as one line)."""
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise LadderError(f"--ladder {file}: no such file (give the path of a ladder file, e.g. "
                          "examples/fashion_ladder.py)")
    ladder.use_built_in()
    rows, ladder._writing = {}, {}
    # its own module name, which can shadow none of the runner's (a file may be called data.py)
    source = path.read_bytes()  # read once: the contents run are the contents hashed
    sha256 = hashlib.sha256(source).hexdigest()
    module = types.ModuleType(f"ladder_file_{sha256[:16]}")
    module.__file__ = str(path)
    try:
        sys.modules[module.__name__] = module  # classes defined in it find their module, as for any import
        exec(compile(source, str(path), "exec"), module.__dict__)
        rows = ladder._writing
    except Exception as error:  # noqa: BLE001 - the file's own error, shown as one line with its line number
        raise LadderError(error_line(path, error)) from None
    finally:
        ladder._writing = BUILT_IN
    if not rows:
        raise LadderError(f"{path} defines no rows: add rung(...) calls (see docs/extending.md)")
    VERSIONS.clear()
    VERSIONS.update(rows)
    ladder.SOURCE.clear()
    ladder.SOURCE.update(file=str(path), sha256=sha256)
    for row in rows.values():
        check_row(row.recipe, row.dataset, f"row {row.number}", row.params)
        if row.tflop is not None:
            check_tflop(row)


def needs_check(recipe: Recipe) -> bool:
    """A recipe with a model of a ladder file's or a batch transform, which only a dummy batch can check."""
    return recipe.model in REGISTERED["model"] or recipe.batch_transform != "none"


def check_row(recipe: Recipe, dataset: str, where: str, params: int | None = None) -> None:
    """Build the recipe's model for the dataset's images and run it, and its batch transform, on a dummy batch:
    a model must return log-probabilities of every class (and have `params` parameters, when given), a transform
    images of the same shape and targets that are labels or probabilities. LadderError says what is wrong."""
    import torch

    from models import build_model, count_parameters

    images = DATASETS[dataset]
    classes = images.classes
    batch = torch.rand(DUMMY_BATCH, images.channels, images.size, images.size, generator=torch.Generator())
    labels = torch.arange(DUMMY_BATCH) % classes
    name = f"{where}: model {recipe.model}"
    try:
        model = build_model(recipe, images.channels, classes).eval()
        with torch.no_grad():
            output = model(batch)
    except Exception as error:  # noqa: BLE001 - the model's own error, as one line
        raise LadderError(f"{name} fails on a dummy batch of {tuple(batch.shape)}: {type(error).__name__}: "
                          f"{error}") from None
    if not isinstance(output, torch.Tensor) or output.shape != (DUMMY_BATCH, classes):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise LadderError(f"{name} returns {shape} for a batch of {tuple(batch.shape)}; it must return "
                          f"({DUMMY_BATCH}, {classes}): one log-probability per class of {images.title}")
    if not torch.allclose(output.float().exp().sum(1), torch.ones(DUMMY_BATCH), atol=1e-3):
        raise LadderError(f"{name} does not return log-probabilities: end its forward in log_softmax(dim=1), as "
                          "the built-in models do")
    if params is not None and count_parameters(model) != params:
        raise LadderError(f"{name} has {count_parameters(model):,} parameters, not the {params:,} the row gives")
    if recipe.batch_transform != "none":
        check_transform(recipe, batch, labels, classes, where)


def check_tflop(row: Version) -> None:
    from runner.arithmetic import run_tflop

    counted = run_tflop(row)
    if not math.isclose(counted, row.tflop, rel_tol=TFLOP_TOLERANCE):
        raise LadderError(f"row {row.number}: a whole run counts {counted:,.3g} TFLOP, not the {row.tflop:,} the row "
                          "gives")


def check_transform(recipe: Recipe, images, labels, classes: int, where: str) -> None:
    import torch

    name = f"{where}: batch transform {recipe.batch_transform}"
    transform = REGISTERED["batch_transform"][recipe.batch_transform]
    try:
        changed, targets = transform(images, labels, classes=classes, generator=torch.Generator(),
                                     **recipe.batch_transform_args)
    except Exception as error:  # noqa: BLE001 - the transform's own error, as one line
        raise LadderError(f"{name} fails on a dummy batch: {type(error).__name__}: {error}") from None
    if not isinstance(changed, torch.Tensor) or changed.shape != images.shape or changed.dtype != images.dtype:
        shape = (tuple(changed.shape), changed.dtype) if isinstance(changed, torch.Tensor) else type(changed).__name__
        raise LadderError(f"{name} returns images of {shape} for {(tuple(images.shape), images.dtype)}: it must "
                          "keep their shape and dtype")
    if isinstance(targets, torch.Tensor) and targets.shape == labels.shape and targets.dtype == torch.int64:
        return
    if not isinstance(targets, torch.Tensor) or targets.shape != (len(labels), classes) or \
            not targets.is_floating_point() or not torch.allclose(targets.sum(1), torch.ones(len(labels)), atol=1e-4):
        raise LadderError(f"{name} returns targets that are neither the labels (int64, ({len(labels)},)) nor class "
                          f"probabilities (({len(labels)}, {classes}), each row summing to one)")
