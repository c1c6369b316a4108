"""The embedded demo datasets "demo" and "demo-train", synthesised from scikit-image's photographs.

No download: every pixel comes from the photographs bundled inside scikit-image
(``skimage.data``), so the whole suite runs offline. Generation is deterministic: the same seed
gives byte-identical JPEG files on the same software stack (each image draws from its own
``numpy.random.default_rng([seed, dataset, kind, instance, index])``, the JPEG quality is fixed).

Layout (revisitop's ground-truth format, as for ROxford5k)::

    <root>/demo/jpg/*.jpg                 images of both datasets (prefix "demo_" or "train_")
    <root>/demo/gnd_demo.json             "demo"        (evaluation)
    <root>/demo/gnd_demo-train.json       "demo-train"  (learning whitening / training heads)
    <root>/demo/views_demo.json           per database image: how it was made (see ViewInfo)
    <root>/demo/views_demo-train.json
    <root>/demo/manifest.json             seed, generator version, sizes, SHA-256 of every file

A ground-truth file holds "imlist" and "qimlist" (file names relative to ``jpg/``, with extension),
"gnd" (one dict per query with "bbx" = [x1, y1, x2, y2] and int lists "easy", "hard", "junk" into
imlist), "instance_labels" (per database image: its instance name or "distractor"),
"query_labels" (per query: its instance name) and "protocol" = "revisited".

Instances
---------
An *instance* is an object cut from a photograph: a box in the source photo and, for objects that
are not rectangles, a mask (the logo's alpha channel, the dark surround of the colour wheel and of
the retina, the horse silhouette, the phantom's ellipse). :data:`DEMO_INSTANCES` (14 recognisable
objects: the astronaut's face and helmet, the space-shuttle model, the cat's face, the coffee cup,
the rocket, the motorcycle, the cameraman, coins, the scikit-image logo, the colour wheel, the
retina, a gland of the immunohistochemistry slide, a patch of the Hubble deep field) are the
evaluation set; :data:`TRAIN_INSTANCES` (12 other objects: the US flag and the mission patch of
the astronaut photo, other coins, the horse, the page heading, the handwriting, the skyline behind
the cameraman, a moon crater, the Shepp-Logan phantom, the garage shelf, another gland, another
Hubble patch) are disjoint regions, so "demo-train" never shows a "demo" object and vice versa.
Clutter (backgrounds, pasted non-instance patches, occluders, distractors) is cut from the same
photographs and textures (brick, grass, gravel, moon, page, clock, checkerboard, cell, hubble,
rocket, coffee, ...) but never overlaps any instance box by more than
:data:`CLUTTER_MAX_INSTANCE_OVERLAP` of that box.

The motorcycle's views use either the left or the right photograph of scikit-image's stereo pair,
so some of its views are a genuine change of viewpoint.

Sizes and queries
-----------------
"demo": 14 instances x 15 database views + 100 distractors = 310 database images, and 70 queries
(5 per instance, as Oxford's 5 queries per landmark). "demo-train": 12 instances x 8 views + 24
distractors = 120 database images, and 60 queries (5 per instance). Images are 512x384 or
384x512 (:data:`IMAGE_SHAPES`). The 5 queries of an instance are 5 different query images (none
of them in the database), each with its own ``bbx`` (the bounding box of the object in that
image); they share the ground truth: the easy / hard / junk lists of that instance's database
views. ``qimlist`` / ``gnd`` / ``query_labels`` hold one entry per query, instance by instance.

Views
-----
Every image is a photograph of a scene: a cluttered background (a mosaic of crops of other
photographs and textures, grey sources tinted) with pasted non-instance patches (each warped by
its own perspective; 2-5 in a database view), the object (alpha-composited with its mask) seen
by a virtual camera, then lit and exposed (a linear illumination ramp across the image of up to
+-45%, gamma, contrast, colour cast), blurred and JPEG-compressed (:func:`photograph`).

A **database view** places the camera anywhere around the object: the object plane's out-of-plane
rotation ``yaw`` in [-45, 45] and ``pitch`` in [-30, 30] degrees (tilt up to 52; "tilt" views
reach about 60), in-plane ``roll`` in [-20, 20], and a scale at which the object's bounding box spans
from a third of the frame to all of it (``fill``, :func:`side_for_fill`). About a third of the
views are cut by the image border (45-95% of the object in the frame) and more than half have
1-2 occluders (patches of other photographs, of 0.3-0.5 times the object's apparent size,
centred on the object). Each instance's views follow :data:`VIEW_SCHEDULE` (15 views: 5 aimed
at "easy", 7 at "hard", 3 at "junk"; the 8 views of "demo-train" are its first 8); a view aimed
at "hard" gets one factor of :data:`HARD_FACTORS` (or two, in a quarter of them): a tilt of
52-61 degrees, a small object (36-62 px), strong blur, darkness, only 13-24% of the object in
the frame, a roll of 60-180 degrees, heavy occlusion, or strong JPEG artefacts. A junk view has
2-8% of the object in the frame. With seed 0 the rule below labels the 210 views of "demo" 74
easy, 86 hard and 50 junk. Distractors are scenes of the same kind without an object, lit and
degraded like the views.

A **query** is a mild-to-moderate view with the object fully inside the frame and unoccluded
(``yaw`` in [-30, 30], ``pitch`` in [-20, 20], ``roll`` in [-10, 10], the object spanning 45-85%
of the frame, mild lighting, no blur or JPEG artefact pass), as Oxford's queries show the
landmark whole; its ``bbx`` is the bounding box of the pasted object.

Easy / hard / junk (the exact rule, :func:`label_view`)
-------------------------------------------------------
With ``visible`` = visible object pixels (inside the image, not occluded) / object pixels of the
whole warped object, ``visible_side`` = sqrt(visible object pixels), ``apparent_side`` =
sqrt(object pixels of the whole warped object), ``tilt`` = angle between the object plane's normal
and the optical axis (degrees), ``roll`` = in-plane rotation (degrees, in [-180, 180]),
``blur_sigma`` (pixels), ``exposure`` = mean intensity after / before lighting and exposure,
``jpeg_artifact_quality`` (the low quality of the artefact pass, or None):

* **junk** if ``visible < 0.10`` or ``visible_side < 24`` px;
* otherwise **hard** if ``visible <= 0.25``, or ``tilt > 50``, or ``|roll| > 45``, or
  ``blur_sigma > 2.5``, or ``exposure < 0.5``, or ``apparent_side < 64`` px, or
  ``jpeg_artifact_quality < 12``;
* otherwise **easy**.

This follows the revisited Oxford protocol (Radenovic et al., CVPR 2018, Sec. 3): easy = more
than 25% of the object clearly visible; hard = visible but small, strongly distorted or degraded;
unclear (junk) = too little of the object to tell. The generator *aims* each view at a label (a
fixed schedule per instance, with varied difficulty factors), but the label stored is always the
one given by the rule above on the measured view.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from helpers.data import data_root, manifest_digest, save_gnd_json

__all__ = [
    "CLUTTER_MAX_INSTANCE_OVERLAP",
    "DEMO_INSTANCES",
    "DemoDatasetError",
    "GENERATOR_VERSION",
    "IMAGE_SHAPES",
    "InstanceSpec",
    "JPEG_QUALITY",
    "TRAIN_INSTANCES",
    "ViewInfo",
    "build_dataset",
    "clutter_box",
    "clutter_crop",
    "content_digest",
    "ensure_demo",
    "exposure_lut",
    "generate_demo",
    "instance_patch",
    "label_view",
    "lighting_gain",
    "load_sources",
    "make_background",
    "photograph",
    "render_distractor",
    "render_query",
    "render_view",
    "side_for_fill",
    "tilt_angle",
    "verify_demo",
    "view_homography",
    "warp_patch",
]

#: Bump whenever a change would alter the generated files: :func:`ensure_demo` regenerates then.
GENERATOR_VERSION = "2.0"
#: Quality of every JPEG written (fixed, for byte-identical re-generation).
JPEG_QUALITY = 90
#: (height, width) of the generated images (landscape or portrait); at most 640 on the long side.
IMAGE_SHAPES = ((384, 512), (512, 384))
#: A clutter crop may cover at most this fraction of any instance's box.
CLUTTER_MAX_INSTANCE_OVERLAP = 0.02
#: Dataset names and the file-name prefix of their images.
DATASETS = {"demo": "demo", "demo-train": "train"}
#: Database views per instance.
DEFAULT_VIEWS = {"demo": 15, "demo-train": 8}
#: Query images per instance (as Oxford's 5 queries per landmark).
DEFAULT_QUERIES = 5
DEFAULT_DISTRACTORS = {"demo": 100, "demo-train": 24}
#: Label aimed at by the i-th database view of an instance (cycled when more views are asked).
VIEW_SCHEDULE = ("easy", "hard", "easy", "junk", "hard", "easy", "hard", "hard",
                 "easy", "hard", "junk", "hard", "easy", "hard", "junk")
HARD_FACTORS = ("tilt", "small", "blur", "dark", "partial", "roll", "occluded", "jpeg")

# Thresholds of the easy / hard / junk rule (see the module docstring).
JUNK_MAX_VISIBLE = 0.10
JUNK_MIN_VISIBLE_SIDE = 24.0
HARD_MAX_VISIBLE = 0.25
HARD_MIN_TILT = 50.0
HARD_MIN_ROLL = 45.0
HARD_MIN_BLUR = 2.5
HARD_MAX_EXPOSURE = 0.5
HARD_MIN_APPARENT_SIDE = 64.0
HARD_MAX_JPEG_QUALITY = 12


class DemoDatasetError(RuntimeError):
    """The demo dataset could not be generated or is not intact."""


# --------------------------------------------------------------------------- sources & instances
@dataclass(frozen=True)
class InstanceSpec:
    """An object: a box ``[x1, y1, x2, y2]`` in a source photo and how its mask is obtained.

    ``mask`` is "box" (the whole rectangle), "alpha" (the source's alpha channel), "nonblack"
    (pixels brighter than a dark surround) or "silhouette" (the source is a binary silhouette).
    ``alt_source``/``alt_box``: the same object in another photograph (another viewpoint).
    """

    name: str
    source: str
    box: tuple[int, int, int, int]
    mask: str = "box"
    alt_source: str | None = None
    alt_box: tuple[int, int, int, int] | None = None


DEMO_INSTANCES: tuple[InstanceSpec, ...] = (
    InstanceSpec("astronaut_face", "astronaut", (150, 25, 295, 185)),
    InstanceSpec("space_shuttle", "astronaut", (355, 0, 475, 265)),
    InstanceSpec("astronaut_helmet", "astronaut", (285, 315, 512, 512)),
    InstanceSpec("cat_face", "chelsea", (30, 0, 420, 300)),
    InstanceSpec("coffee_cup", "coffee", (80, 40, 500, 400)),
    InstanceSpec("rocket", "rocket", (250, 100, 390, 427)),
    InstanceSpec("motorcycle", "motorcycle_left", (75, 95, 720, 455),
                 alt_source="motorcycle_right", alt_box=(25, 95, 685, 455)),
    InstanceSpec("cameraman", "camera", (0, 40, 285, 512)),
    InstanceSpec("coins", "coins", (0, 0, 240, 168)),
    InstanceSpec("scikit_image_logo", "logo", (0, 0, 500, 500), mask="alpha"),
    InstanceSpec("colour_wheel", "colorwheel", (0, 0, 371, 370), mask="nonblack"),
    InstanceSpec("retina", "retina", (0, 0, 1411, 1411), mask="nonblack"),
    InstanceSpec("tissue_gland", "immunohistochemistry", (270, 230, 470, 512)),
    InstanceSpec("galaxies", "hubble_deep_field", (600, 330, 1000, 650)),
)

TRAIN_INSTANCES: tuple[InstanceSpec, ...] = (
    InstanceSpec("us_flag", "astronaut", (0, 0, 75, 330)),
    InstanceSpec("mission_patch", "astronaut", (125, 320, 235, 425)),
    InstanceSpec("coins_lower", "coins", (180, 170, 384, 303)),
    InstanceSpec("horse", "horse", (0, 0, 400, 328), mask="silhouette"),
    InstanceSpec("page_heading", "page", (0, 0, 384, 110)),
    InstanceSpec("handwriting", "text", (0, 0, 448, 172)),
    InstanceSpec("skyline", "camera", (290, 80, 512, 250)),
    InstanceSpec("moon_crater", "moon", (190, 360, 340, 512)),
    InstanceSpec("phantom", "shepp_logan_phantom", (0, 0, 400, 400), mask="nonblack"),
    InstanceSpec("garage_shelf", "motorcycle_left", (340, 0, 741, 95)),
    InstanceSpec("tissue_upper", "immunohistochemistry", (0, 0, 240, 220)),
    InstanceSpec("galaxies_corner", "hubble_deep_field", (0, 0, 350, 300)),
)

INSTANCES = {"demo": DEMO_INSTANCES, "demo-train": TRAIN_INSTANCES}

#: Sources clutter is cut from (photographs are used only outside every instance box).
CLUTTER_SOURCES = (
    "brick", "grass", "gravel", "moon", "page", "clock", "checkerboard", "cell",
    "hubble_deep_field", "rocket", "coffee", "astronaut", "camera", "coins",
    "immunohistochemistry", "motorcycle_left", "retina",
)
#: Sources without any instance box (always usable as clutter).
TEXTURE_SOURCES = ("brick", "grass", "gravel", "clock", "checkerboard", "cell")
#: Grayscale photographs (replicated to RGB); tinted when used as clutter.
GRAY_SOURCES = frozenset({"brick", "grass", "gravel", "moon", "page", "text", "clock",
                          "checkerboard", "cell", "camera", "coins", "horse",
                          "shepp_logan_phantom"})


def _to_uint8(array) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        return np.where(array, 255, 0).astype(np.uint8)
    if array.dtype != np.uint8:
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        return np.round((array - low) * scale).astype(np.uint8)
    return array


@lru_cache(maxsize=1)
def load_sources() -> dict[str, np.ndarray]:
    """The scikit-image photographs used, as ``uint8`` arrays (RGB ``HxWx3``, RGBA for "logo",
    ``HxW`` for grayscale ones and the horse silhouette). Read once, then cached; do not modify."""
    from skimage import data

    names = ("astronaut", "chelsea", "coffee", "colorwheel", "hubble_deep_field",
             "immunohistochemistry", "logo", "retina", "rocket", "brick", "camera", "cell",
             "clock", "coins", "grass", "gravel", "horse", "moon", "page", "text",
             "checkerboard", "shepp_logan_phantom")
    sources = {}
    for name in names:
        try:
            sources[name] = _to_uint8(getattr(data, name)())
        except Exception as exc:  # pragma: no cover - broken scikit-image install
            raise DemoDatasetError(f"scikit-image's bundled photograph {name!r} could not be "
                                   f"read ({exc}); reinstall scikit-image") from exc
    left, right, _ = data.stereo_motorcycle()
    sources["motorcycle_left"] = _to_uint8(left)
    sources["motorcycle_right"] = _to_uint8(right)
    for array in sources.values():
        array.setflags(write=False)
    return sources


def _instance_boxes_by_source() -> dict[str, list[tuple[int, int, int, int]]]:
    boxes: dict[str, list] = {}
    for spec in DEMO_INSTANCES + TRAIN_INSTANCES:
        boxes.setdefault(spec.source, []).append(spec.box)
        if spec.alt_source is not None:
            boxes.setdefault(spec.alt_source, []).append(spec.alt_box)
    return boxes


def _rgb(array: np.ndarray) -> np.ndarray:
    """float32 RGB in [0, 1] from a uint8 gray / RGB / RGBA array."""
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return array[:, :, :3].astype(np.float32) / 255.0


def instance_patch(spec: InstanceSpec, use_alt: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The object's pixels (float32 RGB in [0, 1], ``h x w x 3``) and mask (float32 ``h x w``)."""
    sources = load_sources()
    name, box = (spec.alt_source, spec.alt_box) if use_alt else (spec.source, spec.box)
    x1, y1, x2, y2 = box
    raw = sources[name][y1:y2, x1:x2]
    if spec.mask == "silhouette":
        inside = raw < 128  # the horse silhouette is black on white
        shade = _rgb(sources["gravel"][: raw.shape[0], : raw.shape[1]])
        bronze = np.array([0.45, 0.30, 0.17], np.float32)
        pixels = bronze * (0.75 + 0.5 * shade)
        return np.clip(pixels, 0, 1), inside.astype(np.float32)
    pixels = _rgb(raw)
    if spec.mask == "alpha":
        mask = raw[:, :, 3].astype(np.float32) / 255.0
    elif spec.mask == "nonblack":
        from scipy import ndimage

        bright = pixels.max(axis=2) > 0.06
        mask = ndimage.binary_fill_holes(ndimage.binary_opening(bright, iterations=2))
        mask = mask.astype(np.float32)
    elif spec.mask == "box":
        mask = np.ones(pixels.shape[:2], np.float32)
    else:
        raise ValueError(f"unknown mask kind {spec.mask!r} for instance {spec.name!r}")
    return pixels, mask


# --------------------------------------------------------------------------------- geometry
def view_homography(width: float, height: float, yaw: float, pitch: float, roll: float,
                    scale: float) -> np.ndarray:
    """3x3 homography taking patch pixels (origin top-left) to a view centred on (0, 0).

    The patch is a plane seen by a pinhole camera after rotating it by ``yaw`` (about the vertical
    axis) and ``pitch`` (about the horizontal axis), degrees, at a distance equal to the focal
    length (1.5 patch sizes), then rotated in-plane by ``roll`` degrees and scaled by ``scale``.
    """
    yaw_r, pitch_r, roll_r = np.deg2rad([yaw, pitch, roll])
    rot_y = np.array([[math.cos(yaw_r), 0, math.sin(yaw_r)], [0, 1, 0],
                      [-math.sin(yaw_r), 0, math.cos(yaw_r)]])
    rot_x = np.array([[1, 0, 0], [0, math.cos(pitch_r), -math.sin(pitch_r)],
                      [0, math.sin(pitch_r), math.cos(pitch_r)]])
    rotation = rot_y @ rot_x
    focal = 1.5 * max(width, height)
    plane_to_camera = np.column_stack([rotation[:, 0], rotation[:, 1], [0.0, 0.0, focal]])
    project = np.diag([focal, focal, 1.0]) @ plane_to_camera
    centre = np.array([[1, 0, -width / 2], [0, 1, -height / 2], [0, 0, 1]])
    c, s = math.cos(roll_r), math.sin(roll_r)
    similarity = np.array([[scale * c, -scale * s, 0], [scale * s, scale * c, 0], [0, 0, 1]])
    matrix = similarity @ project @ centre
    return matrix / matrix[2, 2]


def tilt_angle(yaw: float, pitch: float) -> float:
    """Angle (degrees) between the object plane's normal and the optical axis."""
    return float(np.rad2deg(np.arccos(np.cos(np.deg2rad(yaw)) * np.cos(np.deg2rad(pitch)))))


def _apply_h(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    homog = np.column_stack([points, np.ones(len(points))]) @ matrix.T
    return homog[:, :2] / homog[:, 2:3]


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a float32 image in [0, 1] (``HxW`` mask or ``HxWx3`` RGB) with PIL's bilinear
    filter (antialiased when shrinking); RGB goes through 8 bits."""
    width, height = max(1, int(width)), max(1, int(height))
    if array.shape[1] == width and array.shape[0] == height:
        return array
    if array.ndim == 2:
        image = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32))
        return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    rgb = Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8))
    resized = rgb.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32) / 255.0


def warp_patch(pixels: np.ndarray, mask: np.ndarray, yaw: float, pitch: float, roll: float,
               side: float) -> tuple[np.ndarray, np.ndarray]:
    """Warp a patch and its mask by :func:`view_homography` so the object's apparent size
    (sqrt of its warped area) is ``side`` pixels. Returns the RGBA-like pair (pixels, alpha) in
    the frame of the warped bounding box (``fh x fw``), exact up to interpolation."""
    from skimage.transform import ProjectiveTransform

    height, width = mask.shape
    fill = float(mask.mean()) or 1.0
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], float)
    unit = view_homography(width, height, yaw, pitch, roll, 1.0)
    area = _polygon_area(_apply_h(unit, corners)) * fill
    scale = side / math.sqrt(max(area, 1e-6))
    # Pre-shrink the patch so the warp never down-samples by more than ~1.5 (no aliasing).
    shrink = min(1.0, 1.5 * scale)
    if shrink < 1.0:
        new_w, new_h = max(2, round(width * shrink)), max(2, round(height * shrink))
        pixels, mask = _resize(pixels, new_w, new_h), _resize(mask, new_w, new_h)
        scale *= width / new_w
        width, height = new_w, new_h
        corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], float)
    matrix = view_homography(width, height, yaw, pitch, roll, scale)
    quad = _apply_h(matrix, corners)
    low = np.floor(quad.min(axis=0)) - 1
    high = np.ceil(quad.max(axis=0)) + 1
    shift = np.array([[1, 0, -low[0]], [0, 1, -low[1]], [0, 0, 1]])
    frame_w, frame_h = int(high[0] - low[0]), int(high[1] - low[1])
    # PIL resamples with the inverse map (output pixel -> patch pixel), bilinear, premultiplied.
    inverse = ProjectiveTransform(matrix=shift @ matrix).inverse.params
    coefficients = tuple((inverse / inverse[2, 2]).ravel()[:8])
    premultiplied = np.round(np.clip(pixels * mask[:, :, None], 0, 1) * 255).astype(np.uint8)
    alpha_u8 = np.round(np.clip(mask, 0, 1) * 255).astype(np.uint8)
    warped = [np.asarray(Image.fromarray(array).transform(
        (frame_w, frame_h), Image.Transform.PERSPECTIVE, coefficients,
        resample=Image.Resampling.BILINEAR, fillcolor=0), dtype=np.float32) / 255.0
        for array in (premultiplied, alpha_u8)]
    colour, alpha = warped
    colour = colour / np.maximum(alpha[:, :, None], 1.0 / 255.0)
    return np.clip(colour, 0.0, 1.0), alpha


def _paste(canvas: np.ndarray, pixels: np.ndarray, alpha: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Alpha-composite ``pixels`` at offset (x0, y0) into ``canvas`` (in place); returns the
    alpha placed in canvas coordinates (zeros outside the pasted frame), for bookkeeping."""
    height, width = canvas.shape[:2]
    fh, fw = alpha.shape
    cx1, cy1 = max(0, x0), max(0, y0)
    cx2, cy2 = min(width, x0 + fw), min(height, y0 + fh)
    placed = np.zeros((height, width), np.float32)
    if cx1 >= cx2 or cy1 >= cy2:
        return placed
    a = alpha[cy1 - y0:cy2 - y0, cx1 - x0:cx2 - x0]
    p = pixels[cy1 - y0:cy2 - y0, cx1 - x0:cx2 - x0]
    region = canvas[cy1:cy2, cx1:cx2]
    region *= 1.0 - a[:, :, None]
    region += p * a[:, :, None]
    placed[cy1:cy2, cx1:cx2] = a
    return placed


def _visible_sum(alpha: np.ndarray, x0: int, y0: int, width: int, height: int) -> float:
    fh, fw = alpha.shape
    cx1, cy1 = max(0, x0), max(0, y0)
    cx2, cy2 = min(width, x0 + fw), min(height, y0 + fh)
    if cx1 >= cx2 or cy1 >= cy2:
        return 0.0
    return float(alpha[cy1 - y0:cy2 - y0, cx1 - x0:cx2 - x0].sum())


# ---------------------------------------------------------------------------------- clutter
def _overlaps_instance(source: str, box, boxes_by_source) -> bool:
    x1, y1, x2, y2 = box
    for bx1, by1, bx2, by2 in boxes_by_source.get(source, ()):
        inter = max(0, min(x2, bx2) - max(x1, bx1)) * max(0, min(y2, by2) - max(y1, by1))
        if inter > CLUTTER_MAX_INSTANCE_OVERLAP * (bx2 - bx1) * (by2 - by1):
            return True
    return False


def clutter_box(rng: np.random.Generator, aspect: float, min_side: int = 48
                ) -> tuple[str, tuple[int, int, int, int]]:
    """A random region ``(source, [x1, y1, x2, y2])`` of a clutter source, with width/height
    ``aspect``, that covers at most :data:`CLUTTER_MAX_INSTANCE_OVERLAP` of any instance box."""
    sources = load_sources()
    boxes_by_source = _instance_boxes_by_source()
    for attempt in range(20):
        pool = CLUTTER_SOURCES if attempt < 12 else TEXTURE_SOURCES
        name = pool[int(rng.integers(len(pool)))]
        sh, sw = sources[name].shape[:2]
        ch = int(min(sh, sw / aspect) * rng.uniform(0.2, 0.7))
        cw = int(ch * aspect)
        if ch < min_side or cw < min_side or cw > sw or ch > sh:
            continue
        x1 = int(rng.integers(0, sw - cw + 1))
        y1 = int(rng.integers(0, sh - ch + 1))
        box = (x1, y1, x1 + cw, y1 + ch)
        if not _overlaps_instance(name, box, boxes_by_source):
            return name, box
    # Only reached for extreme aspects: a centred crop of brick (which holds no instance).
    sh, sw = sources["brick"].shape[:2]
    cw, ch = (sw, max(1, int(sw / aspect))) if aspect >= 1 else (max(1, int(sh * aspect)), sh)
    return "brick", (0, 0, cw, ch)


def clutter_crop(rng: np.random.Generator, aspect: float) -> np.ndarray:
    """Pixels (float32 RGB in [0, 1]) of a :func:`clutter_box`; grayscale sources are usually
    tinted, and half of the crops are mirrored."""
    name, (x1, y1, x2, y2) = clutter_box(rng, aspect)
    crop = _rgb(load_sources()[name][y1:y2, x1:x2])
    if name in GRAY_SOURCES and rng.random() < 0.7:
        tint = rng.uniform(0.45, 1.0, size=3).astype(np.float32)
        crop = crop * (tint / tint.max())
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def make_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A cluttered scene: a guillotine mosaic of 1-5 crops of photographs and textures."""
    canvas = np.zeros((height, width, 3), np.float32)
    tiles = [(0, 0, width, height)]
    n_tiles = int(rng.choice([1, 2, 3, 4, 5], p=[0.15, 0.25, 0.25, 0.2, 0.15]))
    while len(tiles) < n_tiles:
        index = int(np.argmax([(t[2] - t[0]) * (t[3] - t[1]) for t in tiles]))
        x1, y1, x2, y2 = tiles.pop(index)
        if (x2 - x1) >= (y2 - y1):
            cut = int(x1 + (x2 - x1) * rng.uniform(0.3, 0.7))
            tiles += [(x1, y1, cut, y2), (cut, y1, x2, y2)]
        else:
            cut = int(y1 + (y2 - y1) * rng.uniform(0.3, 0.7))
            tiles += [(x1, y1, x2, cut), (x1, cut, x2, y2)]
    for x1, y1, x2, y2 in tiles:
        crop = clutter_crop(rng, (x2 - x1) / (y2 - y1))
        canvas[y1:y2, x1:x2] = _resize(crop, x2 - x1, y2 - y1)
    return canvas


def paste_clutter_patch(rng: np.random.Generator, canvas: np.ndarray, side: float,
                        centre: tuple[float, float] | None = None,
                        elliptic: bool | None = None) -> np.ndarray:
    """Paste a warped non-instance patch (rectangle or ellipse) of apparent size ``side``;
    returns its alpha in canvas coordinates."""
    height, width = canvas.shape[:2]
    aspect = float(rng.uniform(0.6, 1.6))
    crop = clutter_crop(rng, aspect)
    mask = np.ones(crop.shape[:2], np.float32)
    if elliptic if elliptic is not None else rng.random() < 0.4:
        yy, xx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
        ry, rx = mask.shape[0] / 2, mask.shape[1] / 2
        mask = (((yy + 0.5 - ry) / ry) ** 2 + ((xx + 0.5 - rx) / rx) ** 2 <= 1).astype(np.float32)
    pixels, alpha = warp_patch(crop, mask, rng.uniform(-35, 35), rng.uniform(-35, 35),
                               rng.uniform(-30, 30), side)
    if centre is None:
        centre = (rng.uniform(0, width), rng.uniform(0, height))
    x0 = int(round(centre[0] - alpha.shape[1] / 2))
    y0 = int(round(centre[1] - alpha.shape[0] / 2))
    return _paste(canvas, pixels, alpha, x0, y0)


# ------------------------------------------------------------------------------- photometry
def exposure_lut(gamma: float, contrast: float, cast) -> np.ndarray:
    """Per-channel lookup table (3 x 256, uint8) of the exposure change: gamma, then contrast about
    the (gamma-mapped) mid-grey, then a colour cast (channel gains)."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    mid = 0.5 ** gamma
    mapped = (levels ** gamma - mid) * contrast + mid
    table = mapped[None, :] * np.asarray(cast, np.float64)[:, None]
    return np.round(np.clip(table, 0.0, 1.0) * 255.0).astype(np.uint8)


def lighting_gain(height: int, width: int, angle: float, strength: float) -> np.ndarray:
    """A linear illumination ramp (float32 ``H x W``): gain ``1 + strength * t``, ``t`` in
    [-1, 1] along the direction ``angle`` (radians) across the image, the light falling from one
    side of the scene to the other."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    along = (xx - width / 2) * math.cos(angle) + (yy - height / 2) * math.sin(angle)
    reach = 0.5 * (abs(width * math.cos(angle)) + abs(height * math.sin(angle)))
    return (1.0 + strength * along / max(reach, 1.0)).astype(np.float32)


def photograph(image: np.ndarray, gamma: float, contrast: float, cast, blur_sigma: float,
               jpeg_artifact_quality: int | None, light: tuple[float, float] | None = None
               ) -> tuple[np.ndarray, float]:
    """Light (a :func:`lighting_gain` ramp ``light = (angle, strength)``, if given), expose (see
    :func:`exposure_lut`), blur (Gaussian, ``blur_sigma`` px) and compress (JPEG at
    ``jpeg_artifact_quality``, if given) a whole float RGB image in [0, 1].

    Returns the uint8 image and ``exposure`` = mean intensity after / before lighting and exposure.
    """
    from PIL import ImageFilter

    image_u8 = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    lit_u8 = image_u8
    if light is not None:
        gain = lighting_gain(image.shape[0], image.shape[1], *light)
        lit_u8 = np.round(np.clip(image * gain[:, :, None], 0.0, 1.0) * 255.0).astype(np.uint8)
    table = exposure_lut(gamma, contrast, cast)
    exposed = np.stack([table[c][lit_u8[:, :, c]] for c in range(3)], axis=2)
    exposure = (float(exposed.mean()) + 0.5) / (float(image_u8.mean()) + 0.5)
    picture = Image.fromarray(exposed)
    if blur_sigma > 0.05:
        picture = picture.filter(ImageFilter.GaussianBlur(radius=float(blur_sigma)))
    if jpeg_artifact_quality is not None:
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=int(jpeg_artifact_quality))
        picture = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return np.asarray(picture), exposure


# ------------------------------------------------------------------------------------ views
@dataclass
class ViewInfo:
    """How one image was made (stored in ``views_<dataset>.json``) and its label."""

    kind: str  # "view", "query" or "distractor"
    instance: str  # instance name or "distractor"
    aim: str = ""  # label aimed at by the schedule ("easy", "hard", "junk"); "" for others
    factor: str = ""  # difficulty factors of a "hard" aim, joined by "+"
    source: str = ""
    visible: float = 0.0
    visible_side: float = 0.0
    apparent_side: float = 0.0
    occluded: float = 0.0
    tilt: float = 0.0
    roll: float = 0.0
    blur_sigma: float = 0.0
    exposure: float = 1.0
    jpeg_artifact_quality: int | None = None
    bbx: list[float] | None = None
    label: str = ""


def label_view(info: ViewInfo) -> str:
    """"easy", "hard" or "junk" by the rule of the module docstring (a pure function of ``info``)."""
    if info.visible < JUNK_MAX_VISIBLE or info.visible_side < JUNK_MIN_VISIBLE_SIDE:
        return "junk"
    if (info.visible <= HARD_MAX_VISIBLE or info.tilt > HARD_MIN_TILT
            or abs(info.roll) > HARD_MIN_ROLL or info.blur_sigma > HARD_MIN_BLUR
            or info.exposure < HARD_MAX_EXPOSURE or info.apparent_side < HARD_MIN_APPARENT_SIDE
            or (info.jpeg_artifact_quality is not None
                and info.jpeg_artifact_quality < HARD_MAX_JPEG_QUALITY)):
        return "hard"
    return "easy"


def _view_parameters(rng: np.random.Generator, aim: str) -> dict:
    """Random parameters of a database view aimed at ``aim`` (see :data:`VIEW_SCHEDULE`).

    ``fill``: the larger side of the warped object's bounding box as a fraction of the frame's
    (:func:`side_for_fill`), or ``side``: its apparent size in pixels (the "small" factor). A
    view aimed at "hard" gets one or two factors of :data:`HARD_FACTORS` (``factor``, joined by
    "+")."""
    p = dict(
        yaw=rng.uniform(-45, 45), pitch=rng.uniform(-30, 30), roll=rng.uniform(-20, 20),
        fill=rng.uniform(1 / 3, 1.0), side=None, visible_target=1.0,
        n_occluders=int(rng.choice([0, 1, 2], p=[0.45, 0.4, 0.15])),
        occlude_size=rng.uniform(0.3, 0.5), gamma=math.exp(rng.uniform(-0.4, 0.4)),
        contrast=rng.uniform(0.75, 1.2), cast=rng.uniform(0.82, 1.18, size=3),
        light=(rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 0.45)),
        blur_sigma=float(rng.choice([0.0, rng.uniform(0.3, 1.8)])),
        jpeg=int(rng.integers(25, 70)) if rng.random() < 0.35 else None, factor="",
        n_clutter=int(rng.integers(2, 6)),
    )
    if rng.random() < 0.35:  # partly outside the frame
        p["visible_target"] = rng.uniform(0.45, 0.95)
    if aim == "hard":
        n_factors = 1 if rng.random() < 0.75 else 2
        factors = rng.choice(len(HARD_FACTORS), size=n_factors, replace=False)
        p["factor"] = "+".join(HARD_FACTORS[int(k)] for k in sorted(factors))
        for k in sorted(factors):
            _apply_hard_factor(rng, p, HARD_FACTORS[int(k)])
    elif aim == "junk":
        p["visible_target"] = rng.uniform(0.02, 0.08)
        p["fill"] = rng.uniform(0.6, 1.0)
    elif aim != "easy":
        raise ValueError(f"aim must be 'easy', 'hard' or 'junk', got {aim!r}")
    return p


def _apply_hard_factor(rng: np.random.Generator, p: dict, factor: str) -> None:
    """Change the view parameters ``p`` so that ``factor`` makes the view "hard" by the rule."""
    if factor == "tilt":
        p["yaw"] = float(rng.choice([-1, 1])) * rng.uniform(52, 60)
        p["pitch"] = rng.uniform(-15, 15)
    elif factor == "small":
        p["side"] = rng.uniform(36, 62)
    elif factor == "blur":
        p["blur_sigma"] = rng.uniform(2.8, 4.5)
    elif factor == "dark":
        p["gamma"], p["contrast"] = rng.uniform(2.2, 3.2), rng.uniform(0.35, 0.6)
    elif factor == "partial":
        p["visible_target"] = rng.uniform(0.13, 0.24)
        p["fill"] = rng.uniform(0.7, 1.0)
    elif factor == "roll":
        p["roll"] = float(rng.choice([-1, 1])) * rng.uniform(60, 180)
    elif factor == "occluded":
        p["n_occluders"], p["occlude_size"] = 2, rng.uniform(0.7, 0.95)
    elif factor == "jpeg":
        p["jpeg"] = int(rng.integers(4, 11))
    else:  # pragma: no cover - HARD_FACTORS and this function go together
        raise ValueError(f"unknown hard factor {factor!r}")


def side_for_fill(mask: np.ndarray, yaw: float, pitch: float, roll: float, fill: float,
                  width: int, height: int) -> float:
    """The apparent size (sqrt of the warped object's area, what :func:`warp_patch` takes) at
    which the warped bounding box of an object with ``mask`` spans ``fill`` of a ``width x
    height`` frame along its tighter direction (1 = the object fills the frame)."""
    h, w = mask.shape
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
    quad = _apply_h(view_homography(w, h, yaw, pitch, roll, 1.0), corners)
    extent_w, extent_h = quad.max(axis=0) - quad.min(axis=0)
    area = _polygon_area(quad) * (float(mask.mean()) or 1.0)
    return math.sqrt(area) * fill * min(width / extent_w, height / extent_h)


def _place(rng: np.random.Generator, alpha: np.ndarray, width: int, height: int,
           visible_target: float) -> tuple[int, int]:
    """Offset of the warped object so that its in-frame fraction is close to ``visible_target``
    (fully inside when 1): slide it from a random inside position towards a random border."""
    fh, fw = alpha.shape
    total = float(alpha.sum()) + 1e-6
    x_low, x_high = min(0, width - fw), max(0, width - fw)
    y_low, y_high = min(0, height - fh), max(0, height - fh)
    x0 = int(rng.integers(x_low, x_high + 1))
    y0 = int(rng.integers(y_low, y_high + 1))
    if visible_target >= 1.0:
        return x0, y0
    angle = rng.uniform(0, 2 * math.pi)
    direction = np.array([math.cos(angle), math.sin(angle)])
    reach = float(width + height + fw + fh)
    lo, hi = 0.0, reach  # fraction decreases (weakly) along the ray: bisect on the distance
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        xm, ym = int(round(x0 + direction[0] * mid)), int(round(y0 + direction[1] * mid))
        if _visible_sum(alpha, xm, ym, width, height) / total > visible_target:
            lo = mid
        else:
            hi = mid
    return int(round(x0 + direction[0] * lo)), int(round(y0 + direction[1] * lo))


def _occlude(rng: np.random.Generator, canvas: np.ndarray, placed: np.ndarray, side: float
             ) -> np.ndarray:
    """Paste a clutter patch of apparent size ``side`` centred on a random visible pixel of the
    object (``placed``: its alpha in canvas coordinates); returns the alpha left visible."""
    ys, xs = np.nonzero(placed > 0.5)
    if not len(ys):
        return placed
    k = int(rng.integers(len(ys)))
    occluder = paste_clutter_patch(rng, canvas, side, centre=(float(xs[k]), float(ys[k])))
    return placed * (1.0 - occluder)


def render_view(rng: np.random.Generator, spec: InstanceSpec, aim: str
                ) -> tuple[np.ndarray, ViewInfo]:
    """One database image of instance ``spec`` aimed at label ``aim``: (uint8 image, info)."""
    height, width = IMAGE_SHAPES[int(rng.integers(len(IMAGE_SHAPES)))]
    params = _view_parameters(rng, aim)
    use_alt = spec.alt_source is not None and rng.random() < 0.5
    canvas = make_background(rng, height, width)
    for _ in range(params["n_clutter"]):
        paste_clutter_patch(rng, canvas, min(height, width) * rng.uniform(0.2, 0.5))
    pixels, mask = instance_patch(spec, use_alt)
    side = params["side"]
    if side is None:
        side = side_for_fill(mask, params["yaw"], params["pitch"], params["roll"],
                             params["fill"], width, height)
    obj, alpha = warp_patch(pixels, mask, params["yaw"], params["pitch"], params["roll"], side)
    total = float(alpha.sum())
    x0, y0 = _place(rng, alpha, width, height, params["visible_target"])
    placed = _paste(canvas, obj, alpha, x0, y0)
    in_frame = float(placed.sum())
    for _ in range(params["n_occluders"]):
        placed = _occlude(rng, canvas, placed, params["occlude_size"] * math.sqrt(total))
    visible_px = float(placed.sum())
    image, exposure = photograph(canvas, params["gamma"], params["contrast"], params["cast"],
                                 params["blur_sigma"], params["jpeg"], params["light"])
    info = ViewInfo(
        kind="view", instance=spec.name, aim=aim, factor=params["factor"],
        source=spec.alt_source if use_alt else spec.source,
        visible=visible_px / max(total, 1e-6), visible_side=math.sqrt(visible_px),
        apparent_side=math.sqrt(total), occluded=(in_frame - visible_px) / max(total, 1e-6),
        tilt=tilt_angle(params["yaw"], params["pitch"]), roll=float(params["roll"]),
        blur_sigma=float(params["blur_sigma"]), exposure=exposure,
        jpeg_artifact_quality=params["jpeg"],
    )
    info.label = label_view(info)
    return image, info


def render_query(rng: np.random.Generator, spec: InstanceSpec) -> tuple[np.ndarray, ViewInfo]:
    """A query image of an instance: a mild-to-moderate view (tilt at most ~36 degrees, roll at
    most 10), the object fully inside and unoccluded, with its ``bbx``; mild lighting changes."""
    height, width = IMAGE_SHAPES[int(rng.integers(len(IMAGE_SHAPES)))]
    canvas = make_background(rng, height, width)
    for _ in range(int(rng.integers(1, 4))):
        paste_clutter_patch(rng, canvas, min(height, width) * rng.uniform(0.2, 0.4))
    yaw, pitch, roll = rng.uniform(-30, 30), rng.uniform(-20, 20), rng.uniform(-10, 10)
    pixels, mask = instance_patch(spec)
    margin = 8
    fill = rng.uniform(0.45, 0.85)
    obj, alpha = warp_patch(pixels, mask, yaw, pitch, roll,
                            side_for_fill(mask, yaw, pitch, roll, fill, width, height))
    if alpha.shape[0] > height - 2 * margin or alpha.shape[1] > width - 2 * margin:
        factor = 0.95 * min((height - 2 * margin) / alpha.shape[0],
                            (width - 2 * margin) / alpha.shape[1])
        obj, alpha = warp_patch(pixels, mask, yaw, pitch, roll,
                                factor * math.sqrt(float(alpha.sum())))
    x0 = int(rng.integers(margin, width - alpha.shape[1] - margin + 1))
    y0 = int(rng.integers(margin, height - alpha.shape[0] - margin + 1))
    placed = _paste(canvas, obj, alpha, x0, y0)
    ys, xs = np.nonzero(placed > 0.5)
    bbx = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    image, exposure = photograph(canvas, math.exp(rng.uniform(-0.2, 0.2)), rng.uniform(0.85, 1.1),
                                 rng.uniform(0.9, 1.1, size=3), 0.0, None,
                                 (rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 0.2)))
    total = float(alpha.sum())
    info = ViewInfo(kind="query", instance=spec.name, source=spec.source, visible=1.0,
                    visible_side=math.sqrt(total), apparent_side=math.sqrt(total),
                    tilt=tilt_angle(yaw, pitch), roll=float(roll), exposure=exposure, bbx=bbx)
    info.label = label_view(info)
    return image, info


def render_distractor(rng: np.random.Generator) -> tuple[np.ndarray, ViewInfo]:
    """A clutter image without any instance: background plus 1-4 pasted non-instance patches,
    photographed like a database view."""
    height, width = IMAGE_SHAPES[int(rng.integers(len(IMAGE_SHAPES)))]
    short = min(height, width)
    canvas = make_background(rng, height, width)
    for _ in range(int(rng.integers(1, 5))):
        paste_clutter_patch(rng, canvas, short * rng.uniform(0.25, 0.8))
    image, exposure = photograph(canvas, math.exp(rng.uniform(-0.4, 0.4)),
                                 rng.uniform(0.75, 1.2), rng.uniform(0.82, 1.18, size=3),
                                 float(rng.choice([0.0, rng.uniform(0.3, 2.0)])),
                                 int(rng.integers(25, 70)) if rng.random() < 0.35 else None,
                                 (rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 0.45)))
    return image, ViewInfo(kind="distractor", instance="distractor", exposure=exposure)


# ----------------------------------------------------------------------------- the datasets
#: Kinds of image, each with its own random streams.
_STREAMS = {"query": 0, "view": 1, "distractor": 2}


def _item_rng(seed: int, dataset: str, kind: str, item: int, index: int) -> np.random.Generator:
    """Each image has its own stream (``index``-th query / view of instance ``item``, or the
    ``index``-th distractor), so a subset (fewer instances, queries, views or distractors) is a
    prefix of the full set, image for image."""
    dataset_code = list(DATASETS).index(dataset)
    return np.random.default_rng([int(seed), dataset_code, _STREAMS[kind], int(item), int(index)])


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, format="JPEG", quality=JPEG_QUALITY, optimize=False,
                                progressive=False, subsampling=0)


def build_dataset(dataset: str, jpg_dir: Path, seed: int, n_instances: int | None,
                  n_views: int, n_distractors: int, n_queries: int = DEFAULT_QUERIES
                  ) -> tuple[dict, dict]:
    """Render one dataset's images into ``jpg_dir``: per instance ``n_queries`` query images
    and ``n_views`` database views, then ``n_distractors`` distractors.

    Returns the ground truth (the dict written to ``gnd_<dataset>.json``) and the view records
    ``{"db": [ViewInfo as dict per database image], "query": [... per query]}``.
    """
    prefix = DATASETS[dataset]
    specs = INSTANCES[dataset][: n_instances if n_instances is not None else None]
    imlist, instance_labels, infos = [], [], []
    qimlist, query_labels, query_infos = [], [], []

    def emit(rendered, name, label, names, labels, records):
        image, info = rendered
        _save_jpeg(image, jpg_dir / name)
        names.append(name)
        labels.append(label)
        records.append(info)

    for item, spec in enumerate(specs):
        for k in range(n_queries):
            emit(render_query(_item_rng(seed, dataset, "query", item, k), spec),
                 f"{prefix}_{spec.name}_query{k}.jpg", spec.name, qimlist, query_labels, query_infos)
        for view in range(n_views):
            aim = VIEW_SCHEDULE[view % len(VIEW_SCHEDULE)]
            emit(render_view(_item_rng(seed, dataset, "view", item, view), spec, aim),
                 f"{prefix}_{spec.name}_{view:02d}.jpg", spec.name, imlist, instance_labels, infos)
    for k in range(n_distractors):
        emit(render_distractor(_item_rng(seed, dataset, "distractor", 0, k)),
             f"{prefix}_distractor_{k:03d}.jpg", "distractor", imlist, instance_labels, infos)
    # Every query of an instance has the same relevant images: the instance's database views.
    lists = {spec.name: {"easy": [], "hard": [], "junk": []} for spec in specs}
    for i, info in enumerate(infos):
        if info.instance in lists:
            lists[info.instance][info.label].append(i)
    gnd = [{"bbx": info.bbx, **{key: list(ids) for key, ids in lists[info.instance].items()}}
           for info in query_infos]
    ground_truth = {"imlist": imlist, "qimlist": qimlist, "gnd": gnd,
                    "instance_labels": instance_labels, "query_labels": query_labels,
                    "protocol": "revisited"}
    views = {"db": [asdict(i) for i in infos], "query": [asdict(i) for i in query_infos]}
    return ground_truth, views


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _sizes(n_instances=None, n_views=None, n_distractors=None, n_queries=None) -> dict:
    """The sizes recorded in the manifest; None = the default (all instances, DEFAULT_*)."""
    if n_instances is not None:
        n_instances = _count(n_instances, "n_instances (or None for all)", 1)
    views = dict(DEFAULT_VIEWS)
    if n_views is not None:
        views = {name: _count(n_views, "n_views", 1) for name in DATASETS}
    distractors = dict(DEFAULT_DISTRACTORS)
    if n_distractors is not None:
        distractors = {name: _count(n_distractors, "n_distractors", 0) for name in DATASETS}
    queries = _count(DEFAULT_QUERIES if n_queries is None else n_queries, "n_queries", 1)
    return {"n_instances": n_instances, "n_views": views, "n_queries": queries,
            "n_distractors": distractors}


def generate_demo(root: str | os.PathLike | None = None, seed: int = 0,
                  n_instances: int | None = None, n_views: int | None = None,
                  n_distractors: int | None = None, force: bool = True,
                  n_queries: int | None = None) -> Path:
    """Generate "demo" and "demo-train" into ``<root>/demo`` and return that directory.

    ``n_instances`` (per dataset, None = all), ``n_views`` (database views per instance, None =
    :data:`DEFAULT_VIEWS`: 15 / 8), ``n_distractors`` (per dataset, None =
    :data:`DEFAULT_DISTRACTORS`: 100 / 24) and ``n_queries`` (query images per instance, None =
    :data:`DEFAULT_QUERIES`: 5) make smaller sets for tests; the defaults give the full set. The
    set is written to a temporary directory beside the target and renamed into place, so a
    crash never leaves a half-written ``demo/``. With ``force=False`` an intact set with the
    same seed and sizes is kept as it is.
    """
    root = Path(root) if root is not None else data_root()
    sizes = _sizes(n_instances, n_views, n_distractors, n_queries)
    target = root / "demo"
    if not force and not verify_demo(target, seed=seed, sizes=sizes):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-tmp-", dir=root))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the data set is not
        jpg_dir = tmp / "jpg"
        jpg_dir.mkdir()
        for dataset in DATASETS:
            ground_truth, views = build_dataset(
                dataset, jpg_dir, seed, sizes["n_instances"], sizes["n_views"][dataset],
                sizes["n_distractors"][dataset], sizes["n_queries"])
            save_gnd_json(tmp / f"gnd_{dataset}.json", ground_truth)
            (tmp / f"views_{dataset}.json").write_text(json.dumps(views, indent=1))
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "generator_version": GENERATOR_VERSION, "seed": int(seed), "sizes": sizes,
            "jpeg_quality": JPEG_QUALITY,
            "sha256": {name: _sha256(tmp / name) for name in files},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        _swap_into_place(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _swap_into_place(new: Path, target: Path) -> None:
    """Replace ``target`` by ``new`` with renames (the old set is removed afterwards)."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=".demo-old-", dir=target.parent))
        os.rename(target, old / "demo")
    try:
        os.rename(new, target)
    except OSError:
        # Another process put a set there in the meantime: keep theirs if it is intact.
        if not (target.exists() and not verify_demo(target)):
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def verify_demo(demo_dir: str | os.PathLike, seed: int | None = None,
                sizes: dict | None = None) -> list[str]:
    """Problems with a generated set (empty list = intact): missing manifest or files, another
    generator version, seed or sizes than asked, a file whose SHA-256 differs from the manifest."""
    demo_dir = Path(demo_dir)
    manifest_path = demo_dir / "manifest.json"
    if not manifest_path.is_file():
        return [f"no manifest at {manifest_path}"]
    try:
        manifest = json.loads(manifest_path.read_text())
        recorded = dict(manifest["sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        return [f"unreadable manifest {manifest_path}: {exc}"]
    problems = []
    if manifest.get("generator_version") != GENERATOR_VERSION:
        problems.append(f"generator version {manifest.get('generator_version')!r} != "
                        f"{GENERATOR_VERSION!r}")
    if seed is not None and manifest.get("seed") != seed:
        problems.append(f"seed {manifest.get('seed')!r} != {seed!r}")
    if sizes is not None and manifest.get("sizes") != json.loads(json.dumps(sizes)):
        problems.append(f"sizes {manifest.get('sizes')!r} != {sizes!r}")
    for dataset in DATASETS:
        if f"gnd_{dataset}.json" not in recorded:
            problems.append(f"manifest lists no gnd_{dataset}.json")
    for name, digest in recorded.items():
        path = demo_dir / name
        if not path.is_file():
            problems.append(f"missing file {path}")
        elif _sha256(path) != digest:
            problems.append(f"{path} was modified (SHA-256 differs from the manifest)")
    return problems


def content_digest(demo_dir: str | os.PathLike) -> str:
    """A short digest (12 hex digits) of a generated set's content: the SHA-256 of its manifest.

    Changes whenever any generated file changes (another seed, size or generator version), so a
    feature cache keyed on it never serves features of older images with the same file names."""
    manifest_path = Path(demo_dir) / "manifest.json"
    if not manifest_path.is_file():
        raise DemoDatasetError(f"no manifest at {manifest_path}; generate the set with "
                               "python data_scripts/make_demo.py")
    return manifest_digest(demo_dir)


def ensure_demo(root: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """The full demo directory ``<root>/demo`` (default root: ``helpers.data.data_root()``),
    generated only when it is missing, not intact, or made by another generator version / seed."""
    root = Path(root) if root is not None else data_root()
    target = root / "demo"
    if verify_demo(target, seed=seed, sizes=_sizes()):
        generate_demo(root, seed=seed)
    return target
