"""Turn cluster centres into a segmentation: labels, painted image, overlay, table.

Labels are ordered by the lightness (CIE L*) of each segment's mean RGB colour (the
colour it is painted with), darkest first, ties broken by a* then b*, so the same
image and centres always give the same label numbers.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .colours import ColourHistogram, colour_histogram, lookup
from .levels import nearest_centres
from .settings import SegmentSettings
from .sweep import assign_labels

__all__ = [
    "SEGMENT_COLUMNS",
    "Segmentation",
    "boundaries_on",
    "boundary_overlay",
    "decode_png",
    "encode_jpeg",
    "encode_png",
    "encode_segmented_png",
    "neighbours_jpeg",
    "preview_jpeg",
    "segment",
    "segment_table",
    "thumbnail",
]

#: Columns of :func:`segment_table`, in order.
SEGMENT_COLUMNS = (
    "label", "pixel_count", "share", "mean_r", "mean_g", "mean_b",
    "mean_lab_l", "mean_lab_a", "mean_lab_b", "centroid_x", "centroid_y",
    "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "n_components",
)  # fmt: skip

_BOUNDARY_COLOUR = np.array([255, 0, 255], dtype=np.uint8)


@dataclass(frozen=True, eq=False)
class Segmentation:
    """A segmented image.

    Attributes
    ----------
    labels : (H, W) ndarray of uint8 (uint16 when K > 255)
        Segment of each pixel, exactly ``0 .. k-1``, darkest segment first.
    colours : (k, 3) ndarray of uint8
        Mean RGB colour of each segment's pixels.
    k : int
        Number of segments (non-empty clusters).
    wcss : float
        Sum of squared distances of every pixel to its cluster centre (feature units).
    """

    labels: np.ndarray
    colours: np.ndarray
    k: int
    wcss: float

    @property
    def segmented(self) -> np.ndarray:
        """(H, W, 3) uint8: each pixel painted with its segment's mean colour.

        Painted on each access (0.1-0.2 s at 12 megapixels), not held: at 100
        megapixels it is 400 MB that most callers never need, since
        :func:`encode_segmented_png` writes the picture from the labels. It is a
        strided view of an RGBX buffer: use ``np.ascontiguousarray`` where a packed
        copy is needed.
        """
        return _paint(self.colours, self.labels)


def _colour_sums(
    labels: np.ndarray, hist: ColourHistogram, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel count and mean RGB of each label, from per-colour labels (exact)."""
    weights = hist.counts.astype(np.float64)
    counts = np.bincount(labels, weights=weights, minlength=k)
    sums = np.column_stack(
        [np.bincount(labels, weights=weights * hist.colours[:, c], minlength=k) for c in range(3)]
    )
    return counts, sums / np.maximum(counts, 1)[:, None]


def _lightness_order(mean_rgb: np.ndarray, present: np.ndarray) -> np.ndarray:
    """``present`` labels sorted by the CIE Lab of their mean colour: L*, then a*, then b*."""
    from skimage.color import rgb2lab

    lab = rgb2lab((mean_rgb[present] / 255.0).reshape(-1, 1, 3)).reshape(-1, 3)
    return present[np.lexsort((lab[:, 2], lab[:, 1], lab[:, 0]))]


def _segment_sums(
    rgb: np.ndarray, labels: np.ndarray, hist: ColourHistogram, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel count, mean RGB and mean Lab of each label, exact, in row blocks."""
    from .components import component_sums

    sums = component_sums(labels, k, rgb, hist.pixel_index(rgb), hist.features("lab"))
    mean = sums.values / np.maximum(sums.counts, 1)[:, None]
    return sums.counts, mean[:, :3], mean[:, 3:]


def segment(
    rgb: np.ndarray,
    centres: np.ndarray,
    settings: SegmentSettings,
    *,
    hist: ColourHistogram | None = None,
) -> Segmentation:
    """Assign every pixel to its nearest centre and paint the segments.

    Parameters
    ----------
    rgb : (H, W, 3) ndarray of uint8
    centres : (K, D) ndarray of float64
        Cluster centres in the feature space of ``settings``.
    settings : SegmentSettings
    hist : ColourHistogram, optional
        The colour histogram of ``rgb``, if the caller already has it.

    Returns
    -------
    Segmentation
        Empty clusters are dropped, so ``k`` may be below ``len(centres)``.
    """
    hist = colour_histogram(rgb) if hist is None else hist
    k_in = centres.shape[0]
    if settings.spatial_weight == 0:
        # Colour only: one label per distinct colour, so every sum is over colours.
        features = hist.features(settings.features)
        colour_labels, sq = nearest_centres(features, centres)
        wcss = float(hist.counts @ sq)
        counts, mean_rgb = _colour_sums(colour_labels, hist, k_in)
    else:
        raw, wcss = assign_labels(
            rgb, centres, features=settings.features,
            spatial_weight=settings.spatial_weight, hist=hist,
        )  # fmt: skip
        counts, mean_rgb, _ = _segment_sums(rgb, raw, hist, k_in)
    order = _lightness_order(mean_rgb, np.flatnonzero(counts > 0))
    dtype = np.uint8 if order.size <= 256 else np.uint16
    remap = np.zeros(k_in, dtype=dtype)
    remap[order] = np.arange(order.size, dtype=dtype)
    if settings.spatial_weight == 0:
        labels = hist.broadcast(rgb, remap[colour_labels])
    else:
        labels = remap[raw]
    colours = np.clip(np.rint(mean_rgb[order]), 0, 255).astype(np.uint8)
    return Segmentation(labels=labels, colours=colours, k=int(order.size), wcss=wcss)


def _paint(colours: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``colours[labels]`` as an (H, W, 3) view of an RGBX buffer.

    Gathering one 4-byte word per pixel (:func:`pipeline.colours.lookup`) is about
    6x faster at 12 megapixels than gathering 3-byte rows (``colours[labels]``);
    the result is a strided view, not C-contiguous (:func:`encode_png` copies as
    it needs).
    """
    words = np.zeros((colours.shape[0], 4), dtype=np.uint8)
    words[:, :3] = colours
    packed = lookup(words.view("<u4")[:, 0], labels)
    return packed.view(np.uint8).reshape(*labels.shape, 4)[..., :3]


def boundary_overlay(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The original image with segment boundaries drawn in magenta.

    A pixel is on a boundary when its right or lower neighbour has another label.
    (scikit-image's ``mark_boundaries`` gives the same picture but converts to
    float and dilates, several times slower at 12 megapixels.)

    Parameters
    ----------
    rgb : (H, W, 3) ndarray of uint8
    labels : (H, W) ndarray of int

    Returns
    -------
    (H, W, 3) ndarray of uint8
    """
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    out = np.array(rgb, copy=True)
    out[edge] = _BOUNDARY_COLOUR
    return out


def _component_counts(labels: np.ndarray, k: int) -> np.ndarray:
    """Number of 4-connected components of each label, in one labelling pass."""
    from .components import component_owners, split_components

    components, n = split_components(labels)
    return np.bincount(component_owners(components, labels, n), minlength=k)


def segment_table(
    rgb: np.ndarray,
    labels: np.ndarray,
    *,
    hist: ColourHistogram | None = None,
    n_components: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per segment: size, mean colour, centroid, bounding box, components.

    Parameters
    ----------
    rgb : (H, W, 3) ndarray of uint8
    labels : (H, W) ndarray of int
        Labels ``0 .. k-1``.
    hist : ColourHistogram, optional
        The colour histogram of ``rgb``, if the caller already has it.
    n_components : (k,) ndarray of int, optional
        The 4-connected components of each segment, if the caller already counted them
        (:attr:`pipeline.regions.Regions.cluster_pieces` of regions made from these
        labels): labelling the components is the table's costliest pass at 48 MP.

    Returns
    -------
    pandas.DataFrame
        Columns of :data:`SEGMENT_COLUMNS`. Bounding boxes are half-open
        (``x1``, ``y1`` exclusive); components use 4-connectivity.

    Raises
    ------
    ValueError
        If ``n_components`` does not hold one count per segment.
    """
    from .components import label_extents

    k = int(labels.max()) + 1
    hist = colour_histogram(rgb) if hist is None else hist
    counts, mean_rgb, mean_lab = _segment_sums(rgb, labels, hist, k)
    # Row blocks throughout: whole-image int64 keys cost 300 MB at 12 megapixels.
    centroids, boxes = label_extents(labels, k)
    if n_components is None:
        n_components = _component_counts(labels, k)
    elif np.shape(n_components) != (k,):
        raise ValueError(
            f"n_components must hold one count per segment ({k}), got {np.shape(n_components)}"
        )
    records = {
        "label": np.arange(k, dtype=np.int64),
        "pixel_count": counts.astype(np.int64),
        "share": counts / labels.size,
        "mean_r": mean_rgb[:, 0], "mean_g": mean_rgb[:, 1], "mean_b": mean_rgb[:, 2],
        "mean_lab_l": mean_lab[:, 0], "mean_lab_a": mean_lab[:, 1], "mean_lab_b": mean_lab[:, 2],
        "centroid_x": centroids[:, 0], "centroid_y": centroids[:, 1],
        "bbox_x0": boxes[:, 0], "bbox_y0": boxes[:, 1],
        "bbox_x1": boxes[:, 2], "bbox_y1": boxes[:, 3],
        "n_components": n_components,
    }  # fmt: skip
    return pd.DataFrame(records, columns=list(SEGMENT_COLUMNS))


def encode_png(array: np.ndarray, *, compress_level: int = 3) -> bytes:
    """Encode an (H, W) or (H, W, 3) uint8/uint16 array as PNG bytes (lossless).

    A low zlib level is used: at 12 megapixels level 6 costs about twice the time
    for files 5-10% smaller.
    """
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(array))  # uint16 (H, W) becomes I;16
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_segmented_png(segmentation: Segmentation, *, compress_level: int = 3) -> bytes:
    """The segmented image as PNG bytes, from its labels and colours (lossless).

    Up to 256 segments it is a palette PNG: one byte per pixel to compress and hold
    (the labels themselves, with the segments' colours as the palette) rather than an
    RGB copy of the image, about 3x less to compress and no per-pixel RGB buffer; every
    PNG reader shows the same colours (:func:`decode_png` gives them back as RGB).
    Above 256 segments, an RGB PNG of :attr:`Segmentation.segmented`.
    """
    from PIL import Image

    if segmentation.labels.dtype != np.uint8:
        return encode_png(segmentation.segmented, compress_level=compress_level)
    image = Image.fromarray(segmentation.labels)  # "L"; a palette makes it "P"
    image.putpalette(np.ascontiguousarray(segmentation.colours, dtype=np.uint8).tobytes())
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_jpeg(rgb: np.ndarray, *, quality: int = 92) -> bytes:
    """Encode a full-size picture of a photo (a boundary overlay) as JPEG bytes.

    For pictures that are looked at rather than read back: at 48 megapixels a PNG of
    a photo takes about 5 s and 54 MB, this JPEG 0.25 s and 17 MB. Chroma is not
    subsampled (4:4:4), so one-pixel coloured lines keep their colour (with the
    usual 4:2:0 a magenta line comes back about 70 levels off; here about 3).

    Parameters
    ----------
    rgb : (H, W, 3) ndarray of uint8
    quality : int
        JPEG quality, 1-95.

    Returns
    -------
    bytes
    """
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(
        buffer, format="JPEG", quality=quality, subsampling=0
    )
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Decode PNG bytes written by :func:`encode_png` back to the same array.

    These are kseg's own outputs, of images already checked against the pixel limit
    when they were decoded, so Pillow's decompression-bomb warning (which starts at
    89.5 megapixels, below kseg's 100-megapixel limit) does not apply.
    """
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as image:
            if image.mode in ("I;16", "I;16B", "I"):
                return np.asarray(image, dtype=np.uint16).copy()
            if image.mode == "P":  # a segmented image (:func:`encode_segmented_png`)
                return np.asarray(image.convert("RGB"))
            return np.asarray(image).copy()


def thumbnail(rgb: np.ndarray, *, height: int = 160) -> np.ndarray:
    """A downscaled copy at most ``height`` pixels high (never upscaled)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    if h <= height:
        return np.asarray(rgb)
    new_w = max(1, round(w * height / h))
    return np.asarray(
        Image.fromarray(np.ascontiguousarray(rgb)).resize(
            (new_w, height), Image.Resampling.BILINEAR
        )
    )


def _nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``labels`` resampled to ``shape`` by nearest neighbour (no new labels appear)."""
    rows = (np.arange(shape[0]) * labels.shape[0]) // shape[0]
    cols = (np.arange(shape[1]) * labels.shape[1]) // shape[1]
    return labels[np.ix_(rows, cols)]


def boundaries_on(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The image with segment boundaries drawn so they show on any image.

    A boundary pixel (its right or lower neighbour has another label, widened by one
    pixel) is painted black where the image is light and white where it is dark
    (luminance against 128), so the lines stand out on every colour, unlike a fixed
    colour such as magenta.

    Parameters
    ----------
    rgb : (H, W, 3) ndarray of uint8
    labels : (H, W) ndarray of int

    Returns
    -------
    (H, W, 3) ndarray of uint8
    """
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    wide = edge.copy()
    wide[1:, :] |= edge[:-1, :]
    wide[:, 1:] |= edge[:, :-1]
    out = np.array(rgb, copy=True)
    # Luminance of the boundary pixels only: a float copy of the whole image would be
    # 288 MB at 12 megapixels.
    luminance = out[wide] @ np.array([0.299, 0.587, 0.114])
    out[wide] = np.where(luminance >= 128, 0, 255).astype(np.uint8)[:, None]
    return out


def _jpeg(strip: np.ndarray, max_bytes: int) -> bytes:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(strip))
    for quality in (88, 80, 70, 60, 50):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality, optimize=True)
        if buffer.tell() <= max_bytes:
            break
    return buffer.getvalue()


_GAP = 6  # white pixels between panels


def _side_by_side(tiles: list[np.ndarray], gap: int = _GAP) -> np.ndarray:
    height = max(t.shape[0] for t in tiles)
    space = np.full((height, gap, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for tile in tiles:
        if tile.shape[0] < height:
            pad = np.full((height - tile.shape[0], tile.shape[1], 3), 255, dtype=np.uint8)
            tile = np.concatenate([tile, pad], axis=0)
        parts += [tile, space]
    return np.concatenate(parts[:-1], axis=1)


def _panel_height(shape: tuple[int, ...], height: int, panels: int, max_width: int) -> int:
    """The height of ``panels`` tiles of an image of ``shape`` side by side: at most
    ``height``, and low enough that the strip (with its gaps) is at most ``max_width``."""
    h, w = shape[:2]
    fit = int((max_width - _GAP * (panels - 1)) / panels * h / w)
    return max(1, min(height, fit))


def preview_jpeg(
    original: np.ndarray,
    segmented: np.ndarray,
    labels: np.ndarray,
    *,
    height: int = 300,
    max_width: int = 1000,
    max_bytes: int = 150_000,
) -> bytes:
    """A side-by-side preview, original | segmented | boundaries, as JPEG bytes.

    Each panel is ``height`` pixels high (never upscaled), lower for wide images so the
    whole strip is at most ``max_width`` pixels wide (the Dagster UI's metadata dialog
    shows about 1,000 and cuts the rest off); the boundaries are drawn on the preview
    itself (:func:`boundaries_on`), so they stay visible however much the image is
    reduced. The JPEG quality is lowered until the file fits ``max_bytes``, small
    enough to embed in Dagster metadata.

    Parameters
    ----------
    original, segmented : (H, W, 3) ndarray of uint8
    labels : (H, W) ndarray of int
    height : int
    max_width : int
    max_bytes : int

    Returns
    -------
    bytes
    """
    height = _panel_height(original.shape, height, 3, max_width)
    small = thumbnail(original, height=height)
    painted = thumbnail(segmented, height=height)
    lines = boundaries_on(small, _nearest(labels, small.shape[:2]))
    return _jpeg(_side_by_side([small, painted, lines]), max_bytes)


def neighbours_jpeg(
    rgb: np.ndarray,
    centres: list[np.ndarray],
    settings: SegmentSettings,
    *,
    height: int = 170,
    max_width: int = 1000,
    max_bytes: int = 100_000,
) -> bytes:
    """Small segmentations of ``rgb`` side by side, one per set of ``centres``.

    Used to show what K-1, K and K+1 would give: the image is reduced first (to
    ``height`` pixels, lower if the strip would be wider than ``max_width``), then
    each reduction is segmented with the sweep's centres for that K (the same
    assignment as the full segmentation, on fewer pixels).

    Returns
    -------
    bytes
        A JPEG of the panels, left to right in the order of ``centres``.
    """
    height = _panel_height(rgb.shape, height, max(1, len(centres)), max_width)
    small = np.ascontiguousarray(thumbnail(rgb, height=height))
    hist = colour_histogram(small)
    tiles = [
        np.ascontiguousarray(segment(small, c, settings, hist=hist).segmented) for c in centres
    ]
    return _jpeg(_side_by_side(tiles), max_bytes)
