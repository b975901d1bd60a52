"""Image folders on disk: which files are images of which class. No torch here, so the command line can check a
folder before anything heavy is imported."""
import os
from functools import lru_cache
from pathlib import Path

from runner.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def split_folder(image_folder: str, train: bool) -> Path:
    return Path(image_folder) / ("train" if train else "test")


def _visible(name: str) -> bool:
    """Hidden entries (.DS_Store, AppleDouble ._files, .ipynb_checkpoints) are never data."""
    return not name.startswith(".")


@lru_cache(maxsize=8)
def list_image_folder(folder: Path) -> tuple:
    """(class names, [(path, class index)]) as torchvision's ImageFolder orders them, without hidden entries."""
    try:
        classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and _visible(entry.name))
    except OSError as error:
        raise DataError(f"{folder} is not a usable image folder ({error.strerror}): it needs one sub-folder of "
                        "images per class") from None
    samples = []
    for index, name in enumerate(classes):
        for root, dirs, files in sorted(os.walk(folder / name, followlinks=True)):
            if not all(_visible(part) for part in Path(root).relative_to(folder / name).parts):
                continue
            samples += [(os.path.join(root, file), index) for file in sorted(files)
                        if _visible(file) and file.lower().endswith(IMAGE_EXTENSIONS)]
    if not samples:
        raise DataError(f"{folder} holds no images: it needs one sub-folder of images per class")
    return classes, samples
