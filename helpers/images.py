"""Reading images robustly, resizing and cropping them the way the retrieval papers do.

Everything a method sees goes through :func:`load_image` (database images) or :func:`load_query`
(query images cropped by their bounding box). Both return ``np.uint8`` arrays of shape ``H x W x 3``
in RGB order and never return a silently altered image: every conversion that changes how the file
would look in a viewer emits an :class:`ImageConversionWarning` naming the file and what was done,
and every file that cannot be decoded raises :class:`ImageReadError` naming the file and the reason.

Cases handled by :func:`load_image`

* missing file, directory, empty file, a file that is no image (e.g. text): ``ImageReadError``.
* corrupt header or undecodable data: ``ImageReadError``. (Damage in the middle of JPEG scan data
  is not detectable: libjpeg decodes it with visible artefacts and only logs a warning that Pillow
  does not expose.)
* truncated file (bytes missing at the end, typically an interrupted download): ``ImageReadError``
  by default, because the undecodable part would be filled with grey and the descriptor computed
  on it would be silently wrong. Pass ``allow_truncated=True`` to decode the readable part of a
  truncated JPEG instead (with a warning). Note that libjpeg repairs a file missing only its final
  end-of-image marker without any loss; such a file is read normally.
* EXIF orientation: applied (the same transposition as ``PIL.ImageOps.exif_transpose``; warning).
* CMYK (e.g. Adobe JPEGs), YCbCr, LAB, HSV: converted to RGB (warning).
* 16-bit grayscale (``I;16`` PNG/TIFF): scaled to 8 bits with ``round(v * 255 / 65535)``, not
  clipped as ``Image.convert("L")`` would do (warning). 16-bit RGB PNGs are reduced by Pillow itself
  to their high byte (``v // 256``) when the file is opened; we warn that this happened.
* 32-bit integer / float images: linearly rescaled from their value range to 0..255 (warning).
* grayscale / bilevel: replicated to three channels (warning).
* RGBA, LA, palette or grayscale with a transparency key: composited on white (warning).
* palette images: expanded to RGB (warning).
* multi-frame files (GIF, TIFF): the first frame is used (warning).
* tiny images (short side below :data:`MIN_SIDE`): upsampled with bicubic interpolation so that
  the short side is ``MIN_SIDE`` (warning). A CNN with total stride 32 needs at least one cell.
* huge images, in three steps, so that decoding one image never runs the process out of memory:

  1. The header is read first. Images above :data:`MAX_PIXELS` are refused. Pillow's own
     decompression-bomb guard stays active: it is raised to :data:`MAX_PIXELS` while the header is
     parsed (so the 100-megapixel photos this function accepts open without its warning) and keeps
     its default wherever Pillow checks again while decoding (TIFF tiles, GIF frames); when it
     refuses a file, the refusal is an ``ImageReadError``.
  2. With ``max_side`` given, JPEGs are decoded directly at a reduced scale with ``Image.draft``
     (DCT-domain scaling by 1/2, 1/4 or 1/8, never below ``max_side``), so a 12000 x 9000 photo
     never occupies hundreds of megabytes.
  3. The peak memory of the decode is estimated from the header, before decoding: the decoded
     pixels (``width x height x`` Pillow's bytes per pixel), what the decoder holds besides them
     (a progressive JPEG's DCT coefficients at full size, WebP's and AVIF's decode buffer), an
     EXIF-rotated copy, the working copies of the conversion to 8-bit RGB (up to 24 bytes per
     pixel, for float images), the resize and the output array. Images within
     :data:`MAX_DECODE_BYTES` are decoded as described above. Above it, when ``max_side`` is
     given, the image is shrunk to ``max_side`` right after decoding, in its decoded mode (or a
     mode Pillow resamples correctly, e.g. 8-bit for bilevel), and only the small image is rotated
     and converted; pixel values may then differ by a level or two from converting first (the
     composite on white, the 16-bit scaling happen after the averaging). PNG, TIFF and the like
     cannot be decoded below full size, so their decoded pixels stay the floor. When even that
     exceeds :data:`MAX_DECODE_BYTES`, or no ``max_side`` is given, the file is refused with an
     ``ImageReadError`` whose reason gives its pixel size and the memory it would need, so an
     extraction skips it and goes on. A 14000 x 14000 bilevel PNG: refused at full size (about
     1,870 MiB), shrunk to ``max_side=1024`` with about 370 MiB; with a transparency key it is
     refused either way (it becomes RGBA before it can be averaged: about 1,750 MiB).

  A ``MemoryError`` raised while decoding (the estimate is an estimate, and other work shares the
  memory) becomes an ``ImageReadError`` too, after the partial decode has been freed. The final
  resize to ``max_side`` uses Lanczos (antialiased) filtering.
"""
from __future__ import annotations

import io
import math
import os
import struct
import sys
import threading
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

#: Images whose short side is below this (after any resize) are upsampled to it, with a warning.
MIN_SIDE = 32
#: Largest long side :func:`check_image_size` accepts for the size images are resized to.
MAX_IMAGE_SIZE = 4096
#: Largest image (in pixels, before any draft reduction) that :func:`load_image` agrees to open.
MAX_PIXELS = 200_000_000
#: Most memory (bytes) that decoding one image may need, estimated from its header before decoding
#: (module docstring); :func:`load_image` and :func:`load_query` refuse images above it
#: (``ImageReadError``) unless ``max_side`` lets them shrink the image within it.
MAX_DECODE_BYTES = 1 << 30
#: Images thinner than this (long side / short side) are refused when they also need upsampling.
MAX_ASPECT_RATIO = 64
#: Colour that transparent pixels are composited on.
BACKGROUND_RGB = (255, 255, 255)
#: EXIF tag number of "Orientation".
EXIF_ORIENTATION_TAG = 0x0112

# Pillow's decompression-bomb limit is a process-global setting; we lift it only while a header is
# parsed and hold this lock so that concurrent calls from threads restore it consistently.
_PIL_SETTINGS_LOCK = threading.RLock()

# Exceptions Pillow raises on malformed files (it is not consistent about which).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    Image.DecompressionBombError,
)


class ImageConversionWarning(UserWarning):
    """An image was converted (colour mode, bit depth, orientation, size) while being loaded."""


class ImageReadError(Exception):
    """An image file could not be decoded. ``.path`` is the file, ``.reason`` says why."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = str(reason)
        super().__init__(f"cannot read image {self.path!r}: {self.reason}")

    def __reduce__(self):  # keep picklable (DataLoader workers send exceptions between processes)
        return (type(self), (self.path, self.reason))


def _warn(path, what: str) -> None:
    """Warn, attributing the warning to the first caller outside this module."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    warnings.warn(f"{path}: {what}", ImageConversionWarning, stacklevel=level)


def check_image_size(value, name: str = "image_size") -> int:
    """``value`` as an int if it is a valid long side to resize images to, else ``ValueError``.

    Valid: an int (not a bool) from :data:`MIN_SIDE` to :data:`MAX_IMAGE_SIZE`. ``name`` is the
    parameter named in the message (e.g. ``"--image-size"``).
    """
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
            or not MIN_SIDE <= value <= MAX_IMAGE_SIZE):
        raise ValueError(f"{name} must be an int between {MIN_SIDE} and {MAX_IMAGE_SIZE} "
                         f"(pixels of the long side), got {value!r}")
    return int(value)


def _check_max_side(max_side) -> None:
    if max_side is None:
        return
    if isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)):
        raise TypeError(f"max_side must be an int or None, got {max_side!r}")
    if max_side < MIN_SIDE:
        raise ValueError(f"max_side must be at least MIN_SIDE={MIN_SIDE}, got {max_side}")


def _exif_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
    except Exception:  # malformed EXIF blocks raise all sorts of things; treat as absent
        return 1


# The transposition that displays an image stored with each EXIF orientation (as in
# ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orient(im: Image.Image, orientation: int, path) -> Image.Image:
    """Apply an EXIF orientation (read from the file, possibly before ``im`` was shrunk)."""
    if orientation == 1:
        return im
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    if method is None:
        _warn(path, f"EXIF orientation {orientation} is not a valid value (1-8); kept as stored")
        return im
    _warn(path, f"EXIF orientation {orientation} applied (image rotated/flipped)")
    return im.transpose(method)


def _sixteen_bit_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map 0..65535 to 0..255 proportionally: ``round(v * 255 / 65535)`` (= ``round(v / 257)``)."""
    v = values.astype(np.uint32)
    return ((v * 255 + 65535 // 2) // 65535).astype(np.uint8)


def _has_alpha(mode: str, info: dict) -> bool:
    return mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in info


def _to_rgb(im: Image.Image, path) -> Image.Image:
    """Convert a decoded Pillow image of any mode to 8-bit RGB, warning about every conversion."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im

    if _has_alpha(mode, im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND_RGB + (255,))
        alpha_min = int(np.asarray(rgba.getchannel("A")).min())
        _warn(path, f"mode {mode} with transparency (min alpha {alpha_min}) composited on white")
        return Image.alpha_composite(background, rgba).convert("RGB")

    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        _warn(path, f"16-bit grayscale ({mode}) scaled to 8 bits (v*255/65535) and replicated to RGB")
        gray = _sixteen_bit_to_uint8(np.asarray(im))
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), "RGB")

    if mode in ("I", "F"):
        values = np.asarray(im, dtype=np.float64)
        lo, hi = float(values.min()), float(values.max())
        if mode == "I" and lo >= 0 and hi <= 65535:
            # Pillow opens some 16-bit files (e.g. TIFF) as 32-bit "I"; their range is 16 bits.
            _warn(path, "32-bit integer image with 16-bit values scaled to 8 bits and replicated to RGB")
            gray = _sixteen_bit_to_uint8(values.astype(np.uint32))
        else:
            _warn(path, f"mode {mode} image linearly rescaled from [{lo:g}, {hi:g}] to 0..255 "
                        "and replicated to RGB")
            span = hi - lo if hi > lo else 1.0
            gray = np.round((values - lo) * (255.0 / span)).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), "RGB")

    if mode in ("L", "1"):
        _warn(path, f"grayscale ({mode}) replicated to 3 channels")
    elif mode == "CMYK":
        _warn(path, "CMYK converted to RGB (naive conversion, ICC profile ignored)")
    elif mode == "P":
        _warn(path, "palette image expanded to RGB")
    else:
        _warn(path, f"mode {mode} converted to RGB")
    return im.convert("RGB")


# ------------------------------------------------------------------------------ memory estimate
# A model of what the decode holds at its peak, checked against the peak RSS of loading
# 25-megapixel images of each mode (Pillow 13, numpy 2): at or up to 20% above the measured peak
# (an EXIF-rotated copy is always counted), or a few MB below it for images shrunk first.

# Bytes per pixel of the RGB result and of np.asarray's copy of it (Pillow stores 3 bands in 4
# bytes; np.asarray goes through Image.tobytes, which joins 3-byte chunks into a 3-byte copy).
_OUTPUT_BYTES = 4 + 3 + 3


def _pixel_bytes(mode: str) -> int:
    """Bytes per pixel that Pillow allocates for an image of ``mode``."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _conversion_bytes(mode: str, info: dict) -> int:
    """Bytes per pixel of the working copies :func:`_to_rgb` makes, its RGB result included."""
    if _has_alpha(mode, info):
        return 16  # the RGBA copy, the white background, their composite and its RGB conversion
    if mode == "RGB":
        return 0
    if mode.startswith("I;16"):
        return 14  # numpy: the values, uint32 temporaries, the 8-bit gray and its 3 channels
    if mode in ("I", "F"):
        return 24  # numpy: float64 values and the float64 temporaries of the rescaling
    return 4  # Image.convert("RGB")


def _decoder_bytes(im: Image.Image, stored_size: tuple[int, int]) -> int:
    """Memory a decoder holds besides the decoded pixels, at the file's stored size."""
    if im.info.get("progressive") and getattr(im, "layer", None):
        # libjpeg keeps every DCT coefficient (2 bytes) of a progressive JPEG, at full size
        # whatever the draft scale: one per pixel and per component, less for subsampled ones.
        h_max = max(layer[1] for layer in im.layer)
        v_max = max(layer[2] for layer in im.layer)
        coefficients = sum(layer[1] * layer[2] for layer in im.layer) / (h_max * v_max)
        return int(2 * coefficients * stored_size[0] * stored_size[1])
    if im.format in ("WEBP", "AVIF"):
        return 4 * im.width * im.height  # decoded into a buffer first, then copied into the image
    return 0


def _resize_bytes(size: tuple[int, int], out: tuple[int, int], pixel_bytes: int) -> int:
    """Memory :func:`_resize_pil` allocates (Lanczos, reducing_gap=3): the box-reduced copy, the
    horizontal pass (output width x input height) and the result."""
    (width, height), (out_w, out_h) = size, out
    factor_x, factor_y = int(width / out_w / 3) or 1, int(height / out_h / 3) or 1
    reduced_w, reduced_h = -(-width // factor_x), -(-height // factor_y)
    reduced = reduced_w * reduced_h if factor_x > 1 or factor_y > 1 else 0
    return pixel_bytes * (reduced + out_w * reduced_h + out_w * out_h)


def _output_size(size: tuple[int, int], max_side) -> tuple[int, int]:
    if max_side is None or max(size) <= max_side:
        return size
    return _scaled_size(size[0], size[1], max_side / max(size))


# Modes that Lanczos resampling treats correctly (no palette indices, no bits, 8 or 32 bits per band).
_RESAMPLABLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I", "F"})


def _shrinking_mode(im: Image.Image) -> str:
    """The mode in which an image over the memory budget is shrunk before :func:`_to_rgb`."""
    if "transparency" in im.info or im.mode == "PA":
        return "RGBA"  # a transparency key only matches exact values: apply it before averaging
    if im.mode in _RESAMPLABLE_MODES:
        return im.mode
    if im.mode == "1":
        return "L"
    if im.mode.startswith("I;16"):
        return "I"  # Pillow cannot resample I;16; "I" holds its values exactly
    return "RGB"


def _decode_bytes(im: Image.Image, stored_size: tuple[int, int], max_side, shrink_first: bool) -> int:
    """Estimated peak memory of decoding ``im`` (header read, draft set, not loaded yet).

    The largest of three moments: the decode (the pixels and what the decoder holds besides them);
    the conversion, at full size (the pixels, an EXIF-rotated copy, the conversion's working
    copies) or, with ``shrink_first``, the shrinking in the decoded mode (the pixels, a copy in a
    mode Pillow resamples correctly, the resize) followed by the conversion of the small image;
    the output (the RGB image, its resize, the numpy array).
    """
    width, height = im.size
    pixels = width * height
    decoded = pixels * _pixel_bytes(im.mode)
    decoding = decoded + _decoder_bytes(im, stored_size)
    out_w, out_h = _output_size(im.size, max_side)
    out_pixels = out_w * out_h
    if shrink_first:
        mode = _shrinking_mode(im)
        copies = (mode != im.mode) + (mode in ("RGBA", "LA"))  # the conversion; Pillow's premultiplied copy
        shrinking = (decoded + pixels * _pixel_bytes(mode) * copies
                     + _resize_bytes(im.size, (out_w, out_h), _pixel_bytes(mode)))
        converting = out_pixels * (2 * _pixel_bytes(mode) + _conversion_bytes(mode, {}) + _OUTPUT_BYTES)
        return max(decoding, shrinking, converting)
    converting = pixels * 2 * _pixel_bytes(im.mode) + pixels * _conversion_bytes(im.mode, im.info)
    if max_side is None:
        output = pixels * _OUTPUT_BYTES
    else:
        output = pixels * 4 + _resize_bytes(im.size, (out_w, out_h), 4) + out_pixels * (_OUTPUT_BYTES - 4)
    return max(decoding, converting, output)


def _check_decode_budget(im: Image.Image, stored_size: tuple[int, int], max_side, path) -> bool:
    """Whether to shrink before converting (an image over :data:`MAX_DECODE_BYTES` that ``max_side``
    lets fit); raises ``ImageReadError`` for an image over it either way."""
    need = _decode_bytes(im, stored_size, max_side, shrink_first=False)
    if need <= MAX_DECODE_BYTES:
        return False
    if max_side is not None:
        shrunk = _decode_bytes(im, stored_size, max_side, shrink_first=True)
        if shrunk <= MAX_DECODE_BYTES:
            return True
        need = min(need, shrunk)
    width, height = stored_size
    drafted = f", decoded at {im.width}x{im.height} by JPEG draft" if im.size != tuple(stored_size) else ""
    how = "at full size" if max_side is None else f"and shrinking it to max_side={max_side}"
    mib = 1 << 20
    raise ImageReadError(path, f"image of {width}x{height} pixels ({im.mode}{drafted}): decoding it {how} "
                               f"would need about {need / mib:,.0f} MiB of memory, more than "
                               f"MAX_DECODE_BYTES = {MAX_DECODE_BYTES / mib:,.0f} MiB")


# ----------------------------------------------------------------------------------- decoding

def _open_unguarded(source, path: Path) -> Image.Image:
    """``Image.open`` with Pillow's decompression-bomb guard raised to our MAX_PIXELS check.

    ``Image.MAX_IMAGE_PIXELS`` is process-global; it is raised to :data:`MAX_PIXELS` only while the
    header is parsed (Pillow then refuses images above twice that itself) and restored at once,
    under a lock so that concurrent calls from threads restore it consistently.
    """
    with _PIL_SETTINGS_LOCK:
        saved_max_pixels = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        try:
            im = Image.open(source)
        except UnidentifiedImageError:
            raise ImageReadError(path, "not an image file (Pillow cannot identify its format)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageReadError(path, f"image has more than MAX_PIXELS={MAX_PIXELS} pixels: Pillow's "
                                       f"decompression-bomb guard refused it ({e})") from e
        except _DECODE_ERRORS as e:
            raise ImageReadError(path, f"corrupt or unsupported image header ({e})") from e
        finally:
            Image.MAX_IMAGE_PIXELS = saved_max_pixels
    width, height = im.size
    if width < 1 or height < 1:
        im.close()
        raise ImageReadError(path, f"image has no pixels (size {width}x{height})")
    if width * height > MAX_PIXELS:
        im.close()
        raise ImageReadError(path, f"image is {width}x{height} = {width * height} pixels, more than "
                                   f"MAX_PIXELS={MAX_PIXELS}")
    return im


def _draft_for_max_side(im: Image.Image, max_side) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale, never below ``max_side`` on the long side."""
    if max_side is None or im.format != "JPEG":
        return
    scale = max_side / max(im.size)
    if scale < 0.5:  # draft picks the largest reduction that keeps the size >= the request
        im.draft(im.mode, (math.ceil(im.width * scale), math.ceil(im.height * scale)))


def _is_truncation(error: Exception) -> bool:
    message = str(error)
    return "truncated" in message or "broken data stream" in message


def _load(im: Image.Image, path: Path) -> None:
    """``im.load()``, with Pillow's decompression-bomb refusals (it checks TIFF tiles and GIF frames
    again, at its default limit) as ``ImageReadError``; other decode errors propagate."""
    try:
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(path, f"Pillow's decompression-bomb guard refused to decode it ({e})") from e


def _decode_truncated_jpeg(path: Path, max_side, error: Exception) -> Image.Image:
    """Decode the readable part of a truncated JPEG by appending the end-of-image marker.

    libjpeg then stops at the marker and fills the undecoded blocks (grey for baseline JPEGs).
    This avoids Pillow's process-global ``ImageFile.LOAD_TRUNCATED_IMAGES`` switch, which would
    also make concurrent loads in other threads accept truncated files silently.
    """
    data = path.read_bytes() + b"\xff\xd9"
    im = _open_unguarded(io.BytesIO(data), path)
    _draft_for_max_side(im, max_side)
    try:
        _load(im, path)
    except _DECODE_ERRORS as e:
        raise ImageReadError(path, f"file is truncated ({error}) and its readable part cannot be "
                                   f"decoded either ({e})") from e
    _warn(path, f"file is truncated ({error}); decoded the readable part, the missing part is "
                "filled by the decoder (grey)")
    return im


def _shrink_then_convert(im: Image.Image, path, max_side: int, orientation: int) -> Image.Image:
    """Shrink ``im`` to ``max_side`` in (about) its decoded mode, then orient and convert the small
    image: for images whose full-size conversion would exceed :data:`MAX_DECODE_BYTES`."""
    mode = _shrinking_mode(im)
    if mode == "RGB" and im.mode != "RGB":
        _warn(path, "palette image expanded to RGB" if im.mode == "P" else f"mode {im.mode} converted to RGB")
    work = im if mode == im.mode else im.convert(mode)
    if max(work.size) > max_side:
        out = _output_size(work.size, max_side)
        work = _resize_pil(work, out, Image.Resampling.LANCZOS)
    if im.mode.startswith("I;16"):
        work = work.convert("I;16")  # back to 16 bits (clips Lanczos overshoot) for _to_rgb's scaling
    return _to_rgb(_orient(work, orientation, path), path)


def _decode_opened(im: Image.Image, path: Path, max_side, allow_truncated: bool, apply_exif: bool,
                   shrink_first: bool) -> np.ndarray:
    """Decode an opened (and drafted) image, orient, convert to RGB and shrink to ``max_side``."""
    n_frames = getattr(im, "n_frames", 1)
    rawmode = im.tile[0].args if im.tile else None
    rawmode = rawmode[0] if isinstance(rawmode, tuple) else rawmode
    try:
        _load(im, path)
    except _DECODE_ERRORS as e:
        if not _is_truncation(e):
            raise ImageReadError(path, f"corrupt image data ({e})") from e
        if not allow_truncated:
            raise ImageReadError(path, f"file is truncated ({e}); re-download it, or pass "
                                       "allow_truncated=True to decode the readable part") from e
        if im.format != "JPEG":
            raise ImageReadError(path, f"file is truncated ({e}); allow_truncated only "
                                       f"supports JPEG, this is {im.format}") from e
        im.close()  # free the partial decode before decoding again
        decoded = _decode_truncated_jpeg(path, max_side, e)
    else:
        decoded = im
    if n_frames > 1:
        _warn(path, f"file has {n_frames} frames; using the first")
    if isinstance(rawmode, str) and ";16" in rawmode and im.mode in ("RGB", "RGBA"):
        _warn(path, f"16-bit {im.mode} reduced to 8 bits by Pillow (high byte, v // 256)")
    orientation = _exif_orientation(decoded) if apply_exif else 1
    if shrink_first:
        rgb = _shrink_then_convert(decoded, path, max_side, orientation)
    else:
        rgb = _to_rgb(_orient(decoded, orientation, path), path)
    if rgb is not decoded:
        decoded.close()  # free the decoded pixels (the caller still holds the image object)
    if not shrink_first and max_side is not None and max(rgb.size) > max_side:
        rgb = _resize_pil(rgb, _output_size(rgb.size, max_side), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8)


def _resize_pil(im: Image.Image, size: tuple[int, int], resample) -> Image.Image:
    # reducing_gap first shrinks by an integer factor with a box filter, then finishes with the
    # requested filter: same quality as a direct Lanczos resize, much faster for big reductions.
    return im.resize(size, resample, reducing_gap=3.0 if resample == Image.Resampling.LANCZOS else None)


def _scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, round(width * scale)), max(1, round(height * scale))


def _ensure_min_side(img: np.ndarray, path) -> np.ndarray:
    height, width = img.shape[:2]
    if min(height, width) >= MIN_SIDE:
        return img
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        raise ImageReadError(path, f"degenerate image {width}x{height}: short side below MIN_SIDE="
                                   f"{MIN_SIDE} and aspect ratio above {MAX_ASPECT_RATIO}")
    scale = MIN_SIDE / min(height, width)
    new_w, new_h = max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale))
    _warn(path, f"tiny image {width}x{height} upsampled (bicubic) to {new_w}x{new_h} so that its short "
                f"side is MIN_SIDE={MIN_SIDE}")
    out = Image.fromarray(img).resize((new_w, new_h), Image.Resampling.BICUBIC)
    return np.asarray(out, dtype=np.uint8).copy()


def _check_array_image(img) -> None:
    if not isinstance(img, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(img).__name__}")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected an H x W or H x W x C image, got shape {img.shape}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"image has no pixels (shape {img.shape})")


def _decode_rgb_array(path: Path, max_side, allow_truncated: bool, apply_exif: bool) -> np.ndarray:
    """Decode to RGB and shrink to ``max_side``; no tiny-image upsampling (callers decide).

    Checks the memory budget from the header first; raises ``ImageReadError`` for every failure,
    running out of memory included.
    """
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if not path.is_file():
        raise ImageReadError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")

    with _open_unguarded(path, path) as im:
        stored_size = im.size
        _draft_for_max_side(im, max_side)
        shrink_first = _check_decode_budget(im, stored_size, max_side, path)
        try:
            return _decode_opened(im, path, max_side, allow_truncated, apply_exif, shrink_first)
        except MemoryError:
            # Free the decoded pixels now. The ImageReadError is raised outside this handler so
            # that it does not carry the MemoryError, whose traceback holds the partial decode.
            im.close()
    width, height = stored_size
    raise ImageReadError(path, f"ran out of memory decoding the {width}x{height} image (within "
                               f"MAX_DECODE_BYTES = {MAX_DECODE_BYTES / (1 << 20):,.0f} MiB by the "
                               "estimate from its header, but the process has less memory free)")


def load_image(path, max_side: int | None = None, *, allow_truncated: bool = False,
               apply_exif: bool = True) -> np.ndarray:
    """Read an image file as ``np.uint8`` ``H x W x 3`` RGB.

    Args:
        path: image file.
        max_side: if given, the image is shrunk (Lanczos, aspect ratio kept) so that its longer side
            is ``max_side``; smaller images are not enlarged. JPEGs are decoded at reduced scale
            (``Image.draft``) first, so huge photos are cheap; other images whose full-size
            conversion would exceed :data:`MAX_DECODE_BYTES` are shrunk right after decoding.
        allow_truncated: decode the readable part of a truncated file (with a warning) instead of
            raising :class:`ImageReadError`.
        apply_exif: rotate/flip according to the EXIF Orientation tag (default).

    Returns:
        A contiguous ``uint8`` array ``H x W x 3``; the short side is at least :data:`MIN_SIDE`
        (tiny images are upsampled with a warning, which may make the long side exceed ``max_side``
        for extremely elongated images).

    Raises:
        ImageReadError: the file is missing, empty, not an image, corrupt, truncated, too large
            (:data:`MAX_PIXELS`, or :data:`MAX_DECODE_BYTES` estimated from the header), or
            memory ran out while decoding it.
    """
    _check_max_side(max_side)
    path = Path(os.fspath(path))
    img = _ensure_min_side(_decode_rgb_array(path, max_side, allow_truncated, apply_exif), path)
    img = np.ascontiguousarray(img)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, img.shape
    return img


def displayed_size(path) -> tuple[int, int]:
    """``(height, width)`` of an image as :func:`load_image` shows it at full resolution.

    Reads only the header (EXIF orientations 5-8 swap the sides); works for huge images without
    Pillow's decompression-bomb warning. Raises :class:`ImageReadError` like :func:`load_image`.
    Tiny images are reported at their stored size (before :func:`load_image`'s upsampling).
    """
    path = Path(os.fspath(path))
    if not path.is_file():
        raise ImageReadError(path, "file does not exist" if not path.exists() else "not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    with _open_unguarded(path, path) as im:
        width, height = im.size
        orientation = _exif_orientation(im)
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def resize_max_side(img: np.ndarray, max_side: int, upsample: bool = False) -> np.ndarray:
    """Resize so that the longer side is ``max_side`` (aspect ratio kept, Lanczos antialiasing).

    Images already within ``max_side`` are returned unchanged unless ``upsample=True``.
    Works on ``uint8`` ``H x W`` or ``H x W x C`` arrays; returns the same dtype and channel count.
    """
    _check_array_image(img)
    if isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or max_side < 1:
        raise ValueError(f"max_side must be a positive int, got {max_side!r}")
    if img.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got dtype {img.dtype}")
    height, width = img.shape[:2]
    longest = max(height, width)
    if longest == max_side or (longest < max_side and not upsample):
        return img
    scale = max_side / longest
    squeeze = img.ndim == 3 and img.shape[2] == 1
    pil = Image.fromarray(img[:, :, 0] if squeeze else img)
    resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
    out = np.asarray(_resize_pil(pil, _scaled_size(width, height, scale), resample), dtype=np.uint8)
    return np.ascontiguousarray(out[:, :, None] if squeeze else out)


def _check_box(bbx) -> tuple[float, float, float, float]:
    try:
        values = [float(v) for v in bbx]
    except (TypeError, ValueError):
        raise ValueError(f"bbx must be 4 numbers [x1, y1, x2, y2], got {bbx!r}") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"bbx must be 4 finite numbers [x1, y1, x2, y2], got {bbx!r}")
    x1, y1, x2, y2 = values
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"bbx {bbx!r} is empty or inverted (need x1 < x2 and y1 < y2)")
    return x1, y1, x2, y2


def crop_box(img: np.ndarray, bbx: Sequence[float]) -> np.ndarray:
    """Crop ``img`` to ``bbx = [x1, y1, x2, y2]`` given in this image's pixel coordinates.

    Coordinates are rounded to the nearest integer exactly as ``PIL.Image.crop`` does (which is
    what cnnimageretrieval-pytorch uses on the Oxford/Paris query boxes), ``x2``/``y2`` exclusive,
    then clipped to the image. Raises ``ValueError`` for an empty, inverted or fully outside box.
    """
    _check_array_image(img)
    x1, y1, x2, y2 = _check_box(bbx)
    height, width = img.shape[:2]
    c1, r1 = max(0, int(round(x1))), max(0, int(round(y1)))
    c2, r2 = min(width, int(round(x2))), min(height, int(round(y2)))
    if c2 <= c1 or r2 <= r1:
        raise ValueError(f"bbx {list(bbx)} does not overlap the {width}x{height} image "
                         f"(after rounding and clipping: [{c1}, {r1}, {c2}, {r2}])")
    return np.ascontiguousarray(img[r1:r2, c1:c2])


def scale_box(bbx: Sequence[float], scale) -> list[float]:
    """Scale a box ``[x1, y1, x2, y2]`` by ``scale`` (a number, or ``(sx, sy)``)."""
    x1, y1, x2, y2 = _check_box(bbx)
    if np.ndim(scale) == 0:
        sx = sy = float(scale)
    else:
        if len(scale) != 2:
            raise ValueError(f"scale must be a number or (sx, sy), got {scale!r}")
        sx, sy = float(scale[0]), float(scale[1])
    if not (sx > 0 and sy > 0):
        raise ValueError(f"scale must be positive, got {scale!r}")
    return [x1 * sx, y1 * sy, x2 * sx, y2 * sy]


def load_query(path, bbx: Sequence[float] | None, max_side: int | None = None, *,
               allow_truncated: bool = False) -> np.ndarray:
    """Load a query image, crop it to ``bbx`` and then resize the crop to ``max_side``.

    The order matters and matches cnnimageretrieval-pytorch (``imcrop`` then ``imresize``):
    ``bbx`` is in the full-resolution image's pixel coordinates, so the image is decoded at full
    resolution (no draft), cropped, and only the crop is shrunk; an image whose full-resolution
    decode would exceed :data:`MAX_DECODE_BYTES` raises :class:`ImageReadError`. With
    ``bbx=None`` this is :func:`load_image`. The box refers to the image as displayed, i.e. after
    the EXIF orientation is applied; a warning is issued when a query file carries a non-trivial
    orientation tag.
    A crop whose short side is below :data:`MIN_SIDE` is upsampled with a warning.
    """
    _check_max_side(max_side)
    if bbx is None:
        return load_image(path, max_side, allow_truncated=allow_truncated)
    _check_box(bbx)
    path = Path(os.fspath(path))
    img = _decode_rgb_array(path, None, allow_truncated, apply_exif=True)
    crop = crop_box(img, bbx)
    if max_side is not None:
        crop = resize_max_side(crop, max_side)
    return np.ascontiguousarray(_ensure_min_side(crop, path))
