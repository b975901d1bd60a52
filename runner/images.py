"""One image file as the models take it: decoded with PIL into uint8 (C, H, W) in the version's colour mode, resized
when asked. No torch here, so `predict --onnx` classifies without it."""
import numpy as np

from runner.errors import DataError


def image_mode(channels: int) -> str:
    return "L" if channels == 1 else "RGB"


def decode_image(path: str, channels: int, size: int, resize: bool) -> np.ndarray:
    """One image as uint8 (C, H, W) in the version's colour mode, resized (antialiased, as torchvision's Resize)
    when asked."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert(image_mode(channels))
            if resize and image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as error:
        raise DataError(f"{path} cannot be read as an image ({type(error).__name__}): fix or remove it") from None
    if image.size != (size, size):
        raise DataError(f"{path} is {image.size[0]}x{image.size[1]} but this version takes {size}x{size} images: "
                        "add --resize, or choose a version of that size")
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
