"""Tests for helpers.images: each odd case gets its own file, generated with Pillow in tmp_path."""
import json
import pickle
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import helpers.images as images
from helpers.images import (
    MAX_IMAGE_SIZE,
    MIN_SIDE,
    ImageConversionWarning,
    ImageReadError,
    check_image_size,
    crop_box,
    displayed_size,
    load_image,
    load_query,
    resize_max_side,
    scale_box,
)

REALSMOKE = Path("/work/shared/realsmoke")
REPO_ROOT = Path(__file__).resolve().parents[1]


def _png_bytes(width, height, bit_depth, color_type, rows: bytes) -> bytes:
    """A minimal PNG (Pillow cannot write 16-bit RGB, nor lie about the size)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def _noise_rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _conversion_messages(record):
    return [str(w.message) for w in record if issubclass(w.category, ImageConversionWarning)]


# --------------------------------------------------------------------------------------- plain files

def test_plain_rgb_png_is_returned_exactly_without_warning(tmp_path):
    pixels = _noise_rgb(40, 50)
    path = tmp_path / "plain.png"
    Image.fromarray(pixels).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = load_image(path)
    assert img.dtype == np.uint8 and img.shape == (40, 50, 3)
    np.testing.assert_array_equal(img, pixels)


def test_max_side_shrinks_keeping_aspect_ratio(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(_noise_rgb(200, 300)).save(path)
    assert load_image(path, max_side=100).shape == (67, 100, 3)
    assert load_image(path, max_side=1000).shape == (200, 300, 3)  # never enlarged


def test_max_side_below_min_side_is_rejected(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(_noise_rgb(40, 40)).save(path)
    with pytest.raises(ValueError, match="MIN_SIDE"):
        load_image(path, max_side=MIN_SIDE - 1)


# ----------------------------------------------------------------------------------- unreadable files

def test_missing_file_raises_naming_it(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    assert info.value.path == str(path) and "does not exist" in info.value.reason
    assert str(path) in str(info.value)


def test_empty_file_raises(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty") as info:
        load_image(path)
    assert "empty.jpg" in str(info.value)


def test_text_file_raises(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n" * 20)
    with pytest.raises(ImageReadError, match="not an image") as info:
        load_image(path)
    assert info.value.path == str(path)


def test_corrupt_jpeg_header_raises(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(_noise_rgb(64, 64)).save(good, quality=90)
    data = bytearray(good.read_bytes())
    data[2:200] = bytes(range(198))  # keep the SOI marker, destroy the segments after it
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    assert "corrupt.jpg" in str(info.value)


def test_truncated_jpeg_raises_by_default_and_decodes_on_request(tmp_path):
    good = tmp_path / "good.jpg"
    pixels = _noise_rgb(120, 160, seed=3)
    Image.fromarray(pixels).save(good, quality=90)
    data = good.read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(ImageReadError, match="truncated") as info:
        load_image(path)
    assert info.value.path == str(path)

    with pytest.warns(ImageConversionWarning, match="truncated") as record:
        img = load_image(path, allow_truncated=True)
    assert img.shape == (120, 160, 3)
    assert any("truncated.jpg" in m for m in _conversion_messages(record))
    # the top rows were decoded from real data, so they match the intact file closely
    intact = load_image(good)
    assert np.abs(img[:16].astype(int) - intact[:16].astype(int)).mean() < 2
    # the settings we changed inside load_image are restored
    from PIL import ImageFile
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png_raises_even_when_allowed(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(_noise_rgb(120, 160)).save(good)
    data = good.read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated.png"):
        load_image(path)
    with pytest.raises(ImageReadError, match="only supports JPEG"):
        load_image(path, allow_truncated=True)


def test_image_read_error_pickles():
    err = pickle.loads(pickle.dumps(ImageReadError("/a/b.jpg", "broken")))
    assert err.path == "/a/b.jpg" and err.reason == "broken" and "b.jpg" in str(err)


# ------------------------------------------------------------------------------------- colour modes

def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (48, 32), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    assert Image.open(path).mode == "CMYK"
    with pytest.warns(ImageConversionWarning, match="CMYK") as record:
        img = load_image(path)
    assert img.shape == (32, 48, 3)
    np.testing.assert_allclose(img.reshape(-1, 3).mean(0), [255, 0, 0], atol=4)
    assert any("cmyk.jpg" in m for m in _conversion_messages(record))


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16).repeat(40, axis=0).repeat(10, axis=1)
    path = tmp_path / "gray16.png"
    Image.frombytes("I;16", (40, 40), values.astype("<u2").tobytes()).save(path)
    assert Image.open(path).mode == "I;16"
    with pytest.warns(ImageConversionWarning, match="16-bit") as record:
        img = load_image(path)
    assert img.shape == (40, 40, 3)
    np.testing.assert_array_equal(img[0, ::10, 0], [0, 4, 128, 255])  # round(v * 255 / 65535)
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    assert any("gray16.png" in m for m in _conversion_messages(record))


def test_float_tiff_is_rescaled_from_its_range(tmp_path):
    values = np.linspace(-1.0, 3.0, 40 * 40, dtype=np.float32).reshape(40, 40)
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "F"
    with pytest.warns(ImageConversionWarning, match="float.tif.*rescaled"):
        img = load_image(path)
    assert img[0, 0, 0] == 0 and img[-1, -1, 0] == 255 and img.shape == (40, 40, 3)


def test_16bit_rgb_png_keeps_the_high_byte_and_warns(tmp_path):
    pixels = np.zeros((40, 40, 3), dtype=np.uint16)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 65535, 32768, 255
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(40))
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png_bytes(40, 40, 16, 2, rows))
    with pytest.warns(ImageConversionWarning, match="16-bit RGB") as record:
        img = load_image(path)
    np.testing.assert_array_equal(img[5, 5], [255, 128, 0])
    assert any("rgb16.png" in m for m in _conversion_messages(record))


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.random.default_rng(1).integers(0, 256, size=(36, 44), dtype=np.uint8)
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)
    with pytest.warns(ImageConversionWarning, match="gray.png.*grayscale"):
        img = load_image(path)
    assert img.shape == (36, 44, 3)
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], gray)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., 2] = 255                      # blue everywhere
    rgba[:, :20, 3] = 0                     # left half fully transparent
    rgba[:, 20:30, 3] = 255                 # opaque
    rgba[:, 30:, 3] = 128                   # half transparent
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    with pytest.warns(ImageConversionWarning, match="rgba.png.*white"):
        img = load_image(path)
    np.testing.assert_array_equal(img[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(img[0, 25], [0, 0, 255])
    np.testing.assert_allclose(img[0, 35].astype(int), [127, 127, 255], atol=1)


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    pal = Image.new("P", (40, 40), 1)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * (254 * 3))
    pal.paste(0, (0, 0, 20, 40))            # index 0 on the left half
    path = tmp_path / "palette.png"
    pal.save(path, transparency=0)          # index 0 is transparent
    with pytest.warns(ImageConversionWarning, match="palette.png.*white"):
        img = load_image(path)
    np.testing.assert_array_equal(img[10, 5], [255, 255, 255])  # not black
    np.testing.assert_array_equal(img[10, 30], [200, 10, 10])


def test_multiframe_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (40, 40), c) for c in [(255, 0, 0), (0, 255, 0)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.warns(ImageConversionWarning, match="anim.gif") as record:
        img = load_image(path)
    messages = _conversion_messages(record)
    assert any("2 frames" in m for m in messages) and any("palette" in m for m in messages)
    np.testing.assert_array_equal(img[0, 0], [255, 0, 0])


# ---------------------------------------------------------------------------------- geometry

def test_exif_orientation_6_is_applied(tmp_path):
    # stored 60 wide x 40 high, a red block in the stored top-left corner
    stored = np.zeros((40, 60, 3), dtype=np.uint8)
    stored[:16, :16] = [255, 0, 0]
    pil = Image.fromarray(stored)
    exif = pil.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    pil.save(path, quality=95, exif=exif.tobytes())

    with pytest.warns(ImageConversionWarning, match="rotated.jpg.*orientation 6"):
        img = load_image(path)
    assert img.shape == (60, 40, 3)  # H and W swapped
    # clockwise rotation: the stored top-left corner is displayed at the top-right
    assert img[2:12, -12:-2, 0].mean() > 200 and img[2:12, -12:-2, 1:].mean() < 40
    assert img[2:12, 2:12].mean() < 40
    # the stored orientation is still available
    raw = load_image(path, apply_exif=False)
    assert raw.shape == (40, 60, 3) and raw[2:12, 2:12, 0].mean() > 200
    assert displayed_size(path) == (60, 40)


def test_tiny_image_is_upsampled_to_min_side(tmp_path):
    path = tmp_path / "tiny.png"
    Image.fromarray(_noise_rgb(8, 16)).save(path)
    with pytest.warns(ImageConversionWarning, match="tiny.png.*tiny image 16x8"):
        img = load_image(path)
    assert img.shape == (MIN_SIDE, 2 * MIN_SIDE, 3) and img.dtype == np.uint8

    square = tmp_path / "tiny_square.png"
    Image.fromarray(_noise_rgb(8, 8)).save(square)
    with pytest.warns(ImageConversionWarning):
        assert load_image(square).shape == (MIN_SIDE, MIN_SIDE, 3)

    sliver = tmp_path / "sliver.png"
    Image.fromarray(_noise_rgb(2, 400)).save(sliver)  # would become 32 x 6400
    with pytest.raises(ImageReadError, match="degenerate"):
        load_image(sliver)


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory):
    """A 12000 x 9000 JPEG (108 Mpx, above Pillow's 89.5 Mpx decompression-bomb threshold)."""
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    Image.new("L", (12000, 9000), 150).save(path, quality=30)  # grayscale keeps generation cheap
    return path


def test_huge_jpeg_loads_with_max_side_without_bomb_error(huge_jpeg):
    saved = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = load_image(huge_jpeg, max_side=1024)
        size = displayed_size(huge_jpeg)
    assert img.shape == (768, 1024, 3)
    assert abs(int(img[100, 100, 0]) - 150) <= 2
    assert size == (9000, 12000)
    assert Image.MAX_IMAGE_PIXELS == saved  # only changed inside load_image
    assert not any(issubclass(w.category, Image.DecompressionBombWarning) for w in record)


def test_huge_jpeg_is_decoded_at_reduced_scale(huge_jpeg):
    """Peak memory of the load stays far below the 108 MB one full 8-bit decode would need."""
    script = (
        "import resource, sys, warnings; warnings.simplefilter('ignore')\n"
        "from helpers.images import load_image\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"img = load_image({str(huge_jpeg)!r}, max_side=1024)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((after - before) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=REPO_ROOT, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    growth_mb = int(out.stdout.strip().splitlines()[-1])
    assert growth_mb < 60, f"loading grew the process by {growth_mb} MB: draft decoding not used?"


def test_image_above_max_pixels_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    # header claims 30000 x 30000 (900 Mpx); Pillow would only read the header before we refuse
    path.write_bytes(_png_bytes(30000, 30000, 8, 0, b"\x00"))
    with pytest.raises(ImageReadError, match="MAX_PIXELS") as info:
        load_image(path, max_side=512)
    assert "bomb.png" in str(info.value)


# ------------------------------------------------------------------- memory budget of one decode

def _bilevel_png(path, width, height, *, transparent_white=False):
    """A ``width x height`` 1-bit PNG, black above the middle row and white below it, written row by
    row through a streaming zlib: 14000 x 14000 takes ~0.2 s and a few kB of memory here."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    row_bytes = (width + 7) // 8
    black, white = b"\x00" + b"\x00" * row_bytes, b"\x00" + b"\xff" * row_bytes
    compressor = zlib.compressobj(9)
    idat = [compressor.compress(black if y < height // 2 else white) for y in range(height)]
    idat.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    trns = chunk(b"tRNS", struct.pack(">H", 1)) if transparent_white else b""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + trns
                     + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b""))
    return path


# Loads one image in a fresh process and reports what it returned, its time and the growth of the
# process's peak memory (Pillow allocates outside tracemalloc's view, so peak RSS is measured).
_MEASURED_LOAD = """
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
from helpers.images import ImageReadError, load_image
max_side = None if sys.argv[2] == "None" else int(sys.argv[2])
before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
try:
    img = load_image(sys.argv[1], max_side)
    result = {"shape": list(img.shape), "top": int(img[:200].max()), "bottom": int(img[-200:].min())}
except ImageReadError as e:
    result = {"error": e.reason}
result["seconds"] = time.perf_counter() - start
result["growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(result))
"""


def _measured_load(path, max_side):
    out = subprocess.run([sys.executable, "-c", _MEASURED_LOAD, str(path), str(max_side)],
                         capture_output=True, text=True, check=True, cwd=REPO_ROOT,
                         env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory):
    """14000 x 14000 (196 Mpx, below MAX_PIXELS): 24 kB on disk, ~2 GB to decode and convert at full size."""
    return _bilevel_png(tmp_path_factory.mktemp("huge_png") / "huge.png", 14000, 14000)


def test_huge_png_at_full_size_is_refused_from_its_header(huge_png):
    result = _measured_load(huge_png, None)
    assert "error" in result, "a 14000 x 14000 PNG was decoded at full size"
    reason = result["error"]
    assert "14000x14000" in reason and "MAX_DECODE_BYTES" in reason and "MiB" in reason, reason
    assert result["growth_mb"] < 50 and result["seconds"] < 5, result  # refused before decoding


def test_huge_png_with_max_side_is_shrunk_before_conversion(huge_png):
    """Converting to RGB at full size (then shrinking) would hold ~1200 MB; shrinking the decoded
    bilevel image first holds the decoded pixels and one 8-bit copy (~400 MB)."""
    result = _measured_load(huge_png, 1024)
    assert result.get("shape") == [1024, 1024, 3], result
    assert result["top"] == 0 and result["bottom"] == 255  # black above, white below: not flipped or mixed
    assert result["growth_mb"] < 600, result


def test_huge_png_that_cannot_shrink_within_the_budget_is_refused(tmp_path):
    """A transparency key makes the image RGBA before it can be shrunk: ~1.7 GB even with max_side."""
    path = _bilevel_png(tmp_path / "huge_transparent.png", 14000, 14000, transparent_white=True)
    result = _measured_load(path, 1024)
    assert "error" in result, "the image was decoded although it needs more than MAX_DECODE_BYTES"
    assert "14000x14000" in result["error"] and "max_side=1024" in result["error"], result["error"]
    assert result["growth_mb"] < 50 and result["seconds"] < 5, result


def test_decode_budget_counts_the_jpeg_draft_size(huge_jpeg, monkeypatch):
    monkeypatch.setattr(images, "MAX_DECODE_BYTES", 64 << 20)
    with pytest.raises(ImageReadError, match="12000x9000.*MAX_DECODE_BYTES = 64 MiB"):
        load_image(huge_jpeg)
    with pytest.raises(ImageReadError, match="12000x9000"):
        load_query(huge_jpeg, [0, 0, 100, 100], max_side=64)  # the box needs the full resolution
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageConversionWarning)
        assert load_image(huge_jpeg, max_side=1024).shape == (768, 1024, 3)  # decoded at 1500 x 1125


def test_decode_budget_counts_progressive_jpeg_coefficients(tmp_path, monkeypatch):
    """libjpeg holds a progressive JPEG's DCT coefficients at full size whatever the draft scale."""
    image = Image.new("RGB", (4000, 3000), (200, 120, 40))
    baseline, progressive = tmp_path / "baseline.jpg", tmp_path / "progressive.jpg"
    image.save(baseline, quality=80)
    image.save(progressive, quality=80, progressive=True)
    monkeypatch.setattr(images, "MAX_DECODE_BYTES", 20 << 20)
    assert load_image(baseline, max_side=500).shape == (375, 500, 3)
    with pytest.raises(ImageReadError, match="4000x3000 pixels \\(RGB, decoded at 500x375 by JPEG draft\\)"):
        load_image(progressive, max_side=500)  # 36 MB of coefficients (4:2:0)


@pytest.mark.parametrize("where", ["decode", "conversion"])
def test_memory_error_becomes_image_read_error(tmp_path, monkeypatch, where):
    path = tmp_path / "gray.png"
    Image.fromarray(np.full((40, 50), 7, dtype=np.uint8)).save(path)

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    if where == "decode":
        monkeypatch.setattr(ImageFile.ImageFile, "load", out_of_memory)
    else:
        monkeypatch.setattr(images, "_to_rgb", out_of_memory)
    with pytest.raises(ImageReadError, match="ran out of memory decoding the 50x40 image") as info:
        load_image(path)
    assert info.value.path == str(path)
    # not chained to the MemoryError, whose traceback would keep the partial decode alive
    assert info.value.__context__ is None and info.value.__cause__ is None


def test_pillow_decompression_bomb_guard_while_decoding_is_an_image_read_error(tmp_path, monkeypatch):
    path = tmp_path / "tiles.tif"
    Image.fromarray(_noise_rgb(100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow checks TIFF tiles again in load()
    with pytest.raises(ImageReadError, match="decompression-bomb guard refused to decode it") as info:
        load_image(path)
    assert info.value.path == str(path)
    assert Image.MAX_IMAGE_PIXELS == 1000


def _smooth(h, w):
    y, x = np.mgrid[0:h, 0:w]
    return (x * 255 / (w - 1) * 0.6 + y * 255 / (h - 1) * 0.4)


def _mode_image(mode, path):
    """A smooth 400 x 300 image of ``mode`` saved to ``path`` (transparency where the mode has it)."""
    gray = _smooth(300, 400)
    g8 = np.round(gray).astype(np.uint8)
    if mode == "L":
        Image.fromarray(g8).save(path)
    elif mode == "1":
        Image.fromarray(g8 > 100).save(path)
    elif mode == "P":
        Image.fromarray(np.stack([g8, 255 - g8, g8 // 2], 2)).convert("P").save(path)
    elif mode == "P-transparent":
        Image.fromarray(np.stack([g8, 255 - g8, g8 // 2], 2)).quantize(64).save(path, transparency=0)
    elif mode in ("RGBA", "LA"):
        alpha = np.round(255 - gray * 0.5).astype(np.uint8)
        bands = [g8, 255 - g8, g8 // 2][: 3 if mode == "RGBA" else 1] + [alpha]
        Image.fromarray(np.stack(bands, 2), mode).save(path)
    elif mode == "I;16":
        Image.fromarray(np.round(gray * 257).astype(np.uint16)).save(path)
    elif mode == "F":
        Image.fromarray((gray / 64 - 1).astype(np.float32)).save(path)
    elif mode == "CMYK":
        Image.fromarray(np.stack([g8, 255 - g8, g8 // 2], 2)).convert("CMYK").save(path, quality=95)
    elif mode == "RGB-rotated":
        pil = Image.fromarray(np.stack([g8, 255 - g8, g8 // 2], 2))
        exif = pil.getexif()
        exif[0x0112] = 6
        pil.save(path, quality=95, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("mode, suffix", [
    ("L", "png"), ("1", "png"), ("P", "png"), ("P-transparent", "png"), ("RGBA", "png"), ("LA", "png"),
    ("I;16", "png"), ("F", "tif"), ("CMYK", "jpg"), ("RGB-rotated", "jpg")])
def test_shrinking_before_conversion_agrees_with_converting_first(tmp_path, monkeypatch, mode, suffix):
    """The path taken for images over MAX_DECODE_BYTES (shrink in the decoded mode, then orient and
    convert the small image) gives what converting at full size gives, within a level or two."""
    path = _mode_image(mode, tmp_path / f"image.{suffix}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageConversionWarning)
        reference = load_image(path, max_side=100)
        monkeypatch.setattr(images, "_check_decode_budget", lambda *args: True)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always", ImageConversionWarning)
            shrunk_first = load_image(path, max_side=100)
    expected_shape = (100, 75, 3) if mode == "RGB-rotated" else (75, 100, 3)
    assert shrunk_first.shape == reference.shape == expected_shape
    difference = np.abs(shrunk_first.astype(int) - reference.astype(int))
    assert difference.mean() < 1.0 and np.percentile(difference, 99) <= 3, difference.max()
    if mode != "RGB-rotated":
        assert _conversion_messages(record), "the conversion to RGB was not reported"


def test_check_image_size():
    assert check_image_size(MIN_SIDE) == MIN_SIDE and check_image_size(MAX_IMAGE_SIZE) == MAX_IMAGE_SIZE
    assert check_image_size(np.int64(512)) == 512 and type(check_image_size(np.int64(512))) is int
    with pytest.raises(ValueError) as info:
        check_image_size(100000)
    assert str(info.value) == ("image_size must be an int between 32 and 4096 (pixels of the long side), "
                               "got 100000")
    for bad in [MIN_SIDE - 1, 0, -512, MAX_IMAGE_SIZE + 1, True, 512.0, "512", None]:
        with pytest.raises(ValueError, match="image_size must be an int between"):
            check_image_size(bad)
    with pytest.raises(ValueError, match="^--image-size must be"):
        check_image_size(8, name="--image-size")


# ------------------------------------------------------------------------- resize / crop / query

def test_resize_max_side():
    img = _noise_rgb(200, 100)
    assert resize_max_side(img, 50).shape == (50, 25, 3)
    assert resize_max_side(img, 400) is img  # no upsampling unless asked
    assert resize_max_side(img, 400, upsample=True).shape == (400, 200, 3)
    assert resize_max_side(img[:, :, 0], 50).shape == (50, 25)
    with pytest.raises(ValueError):
        resize_max_side(img, 0)
    with pytest.raises(TypeError):
        resize_max_side(img.astype(np.float32), 50)


def test_resize_max_side_is_antialiased():
    # a one-pixel checkerboard averages to grey when shrunk with antialiasing (no aliasing pattern)
    checker = (np.indices((256, 256)).sum(0) % 2 * 255).astype(np.uint8)
    small = resize_max_side(np.repeat(checker[..., None], 3, 2), 32)
    assert np.abs(small[4:-4, 4:-4].astype(int) - 128).max() <= 3


def test_crop_box_rounds_like_pil_and_clips():
    img = _noise_rgb(50, 80)
    np.testing.assert_array_equal(crop_box(img, [10, 5, 30, 25]), img[5:25, 10:30])
    np.testing.assert_array_equal(crop_box(img, [9.6, 4.6, 29.7, 25.2]), img[5:25, 10:30])
    np.testing.assert_array_equal(crop_box(img, [-10, -3, 200, 20.0]), img[0:20, 0:80])
    pil_crop = np.asarray(Image.fromarray(img).crop((9.6, 4.6, 29.7, 25.2)))
    np.testing.assert_array_equal(crop_box(img, [9.6, 4.6, 29.7, 25.2]), pil_crop)


@pytest.mark.parametrize("bbx", [[30, 5, 10, 25], [10, 5, 10, 25], [100, 0, 120, 10], [1, 2, 3], [0, 0, np.nan, 4]])
def test_crop_box_rejects_bad_boxes(bbx):
    with pytest.raises(ValueError):
        crop_box(_noise_rgb(50, 80), bbx)


def test_scale_box():
    assert scale_box([10, 20, 30, 40], 0.5) == [5, 10, 15, 20]
    assert scale_box([10, 20, 30, 40], (2, 0.5)) == [20, 10, 60, 20]
    with pytest.raises(ValueError):
        scale_box([10, 20, 30, 40], 0)


def test_load_query_crops_in_original_coordinates_then_resizes(tmp_path):
    pixels = np.zeros((200, 400, 3), dtype=np.uint8)
    pixels[:, :200] = [255, 0, 0]
    pixels[:, 200:] = [0, 0, 255]
    pixels[50:150, 250:350] = [0, 255, 0]  # the "object"
    path = tmp_path / "query.png"
    Image.fromarray(pixels).save(path)
    bbx = [250, 50, 350, 150]
    query = load_query(path, bbx, max_side=64)
    assert query.shape == (64, 64, 3)
    np.testing.assert_array_equal(query, np.broadcast_to([0, 255, 0], (64, 64, 3)))
    expected = resize_max_side(crop_box(load_image(path), bbx), 64)
    np.testing.assert_array_equal(query, expected)
    # resizing first would put the box on the wrong pixels; with max_side the box is still original-pixel based
    assert load_query(path, None, max_side=64).shape == (32, 64, 3)


def test_load_query_on_tiny_image_crops_before_upsampling(tmp_path):
    pixels = np.zeros((20, 20, 3), dtype=np.uint8)
    pixels[:, 10:] = 255
    path = tmp_path / "tiny_query.png"
    Image.fromarray(pixels).save(path)
    with pytest.warns(ImageConversionWarning, match="tiny_query.png"):
        query = load_query(path, [10, 0, 20, 20], max_side=64)
    assert query.shape == (MIN_SIDE * 2, MIN_SIDE, 3)
    assert query.min() == 255  # only the white half, the box was applied at original resolution


# ---------------------------------------------------------------------------------- real photos

@pytest.mark.skipif(not REALSMOKE.is_dir(), reason="no /work/shared/realsmoke")
def test_real_photos():
    paths = sorted(REALSMOKE.glob("*/*.jpg"))[:4]
    assert paths, "realsmoke folder has no jpg files"
    for path in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImageConversionWarning)
            small = load_image(path, max_side=256)
            full = load_image(path)
        assert small.dtype == np.uint8 and small.ndim == 3 and small.shape[2] == 3
        assert max(small.shape[:2]) == min(256, max(full.shape[:2]))
        assert small.std() > 10, f"{path} decoded to a nearly constant image"
        # draft decoding + Lanczos agrees with full decoding + Lanczos
        reference = resize_max_side(full, 256)
        assert reference.shape == small.shape
        assert np.abs(reference.astype(int) - small.astype(int)).mean() < 6
