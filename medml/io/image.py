"""2D images (PNG, JPEG, BMP, TIFF) and the PNG writers: palette masks and colour overlays.

Pixels come back as stored: grey stays HxW (8 or 16 bit), palette images return their *indices* (a palette
PNG mask keeps its labels), RGB and RGBA stay HxWx3 / HxWx4. Pass ``rgb=True`` to get HxWx3 whatever was stored.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medml.errors import AbsurdSizeError, CorruptFileError, DataLayoutError, TooLargeError
from medml.io.guard import check_memory, reading
from medml.io.types import Image2D
from medml.utils.files import atomic_path

MAX_SIDE = 65536
Palette = Sequence[Sequence[int]] | Mapping[int, Sequence[int]] | np.ndarray


def default_palette(n: int = 256) -> np.ndarray:
    """The Pascal VOC / DAVIS colour map (0 black, 1 dark red, 2 dark green, ...), as (n, 3) uint8."""
    palette = np.zeros((n, 3), np.uint8)
    for index in range(n):
        label, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((label >> 0) & 1) << shift
            g |= ((label >> 1) & 1) << shift
            b |= ((label >> 2) & 1) << shift
            label >>= 3
        palette[index] = (r, g, b)
    return palette


def as_palette(palette: Palette | None, n: int = 256) -> np.ndarray:
    """(256, 3) uint8 from a list of colours, a {label: colour} mapping, or None (the default palette)."""
    table = default_palette(256)
    if palette is None:
        return table
    if isinstance(palette, Mapping):
        for label, colour in palette.items():
            table[int(label)] = np.asarray(colour, np.uint8)[:3]
        return table
    colours = np.asarray(palette, np.uint8).reshape(-1, 3)
    table[: len(colours)] = colours[:256]
    return table


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of a dataset's image from its header, without decoding the pixels; an unreadable image is a
    layout error naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError) as exc:
        raise DataLayoutError(f"cannot read the image ({exc})", path) from None


def read_image_file(path: str | Path, *, rgb: bool = False) -> Image2D:
    """Read a PNG/JPEG/BMP/TIFF into an `Image2D` (first page of a multi-page TIFF).

    Args:
        path: the file.
        rgb: convert grey, palette and RGBA to HxWx3 uint8 RGB (alpha dropped); by default pixels are returned
            as stored.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img_file = Image.open(path)
    except Image.DecompressionBombError as exc:
        # Pillow refuses above twice Image.MAX_IMAGE_PIXELS (about 179 megapixels) before decoding anything.
        raise TooLargeError(f"image too large to decode ({exc})", path) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise CorruptFileError(f"cannot read image ({exc})", path) from None
    with reading(path, "image"), img_file as img:
        if max(img.size) > MAX_SIDE or min(img.size) <= 0:
            raise AbsurdSizeError(f"implausible image size {img.size}", path)
        check_memory(decoded_image_bytes(img, rgb), f"an image of {img.size[0]}x{img.size[1]} {img.mode}", path)
        try:
            mode = img.mode
            if img.format == "JPEG":
                img = ImageOps.exif_transpose(img)  # cameras store rotation in EXIF; apply it as viewers do
            meta: dict[str, Any] = {"mode": mode, "format": img.format or path.suffix.lstrip(".").upper()}
            if mode == "P":
                meta["palette"] = np.asarray(img.getpalette() or [], np.uint8).reshape(-1, 3)[:256].tolist()
            if rgb:
                array = np.asarray(img.convert("RGB"))
            elif mode in ("I;16", "I;16B", "I;16L"):
                array = np.asarray(img).astype(np.uint16)
            elif mode == "I":
                data = np.asarray(img)
                array = data.astype(np.uint16) if data.min() >= 0 and data.max() < 65536 else data
            elif mode in ("1", "L", "P", "RGB", "RGBA", "F"):
                array = np.asarray(img).astype(np.uint8) if mode == "1" else np.asarray(img)
            elif mode == "LA":
                array = np.asarray(img)[..., 0]
            else:
                array = np.asarray(img.convert("RGB"))
            dpi = img.info.get("dpi")
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise CorruptFileError(f"cannot read image ({exc})", path) from None
    spacing = None
    if dpi and all(float(d) > 1 for d in dpi[:2]):
        spacing = (25.4 / float(dpi[1]), 25.4 / float(dpi[0]))  # mm per pixel (row, column)
    return Image2D(np.ascontiguousarray(array), spacing, meta)


def decoded_image_bytes(img: Any, rgb: bool = False) -> int:
    """Bytes of the decoded array of a Pillow image, from its header (size and mode) alone, with one working copy
    (mode conversions and ``np.asarray`` copy the pixels once)."""
    width, height = img.size
    bands = 3 if rgb else max(1, len(img.getbands()))
    item = 4 if img.mode in ("I", "F") else 2 if img.mode.startswith("I;16") else 1
    return 2 * width * height * bands * item


def write_palette_png(mask: np.ndarray, palette: Palette | None, path: str | Path) -> Path:
    """Write an HxW label mask as a palette PNG: the pixel values are the labels, the palette only shows them.

    Args:
        mask: HxW integer labels in 0..255.
        palette: colours per label (list, {label: colour} or None for the VOC/DAVIS palette).
        path: ``.png`` file.
    """
    from PIL import Image

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a palette PNG holds one HxW label mask, got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError("palette PNG labels must be in 0..255")
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(as_palette(palette).reshape(-1).tolist())
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """Grey or colour image of any type to HxWx3 uint8 (min-max scaled unless already uint8)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    if image.dtype != np.uint8:
        data = image.astype(np.float32)
        lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
        image = np.round((data - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    elif image.ndim == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image


def overlay(image: np.ndarray, mask: np.ndarray, palette: Palette | None = None, alpha: float = 0.5) -> np.ndarray:
    """Blend label colours over an image where the mask is non-zero; returns HxWx3 uint8."""
    rgb = to_uint8_rgb(image).astype(np.float32)
    mask = np.asarray(mask)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image {rgb.shape[:2]}")
    colours = as_palette(palette)[np.clip(mask, 0, 255).astype(np.uint8)].astype(np.float32)
    labelled = (mask > 0)[..., None]
    return np.where(labelled, (1 - alpha) * rgb + alpha * colours, rgb).round().astype(np.uint8)


def write_overlay_png(
    image: np.ndarray, mask: np.ndarray, palette: Palette | None, path: str | Path, alpha: float = 0.5
) -> Path:
    """Write the image with the mask's label colours blended over it (for people, not for re-reading labels)."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(overlay(image, mask, palette, alpha)).save(tmp, format="PNG")
    return path
