"""Fuzzing the whole decode path, beyond ``tests/pipeline/test_images.py``'s byte mutations.

* Structured files: PNGs with random header fields, palettes and transparency chunks
  (CRCs valid, so the bytes reach the decoder instead of failing the checksum), and
  TIFFs written by tifffile with random sample types, channel counts, photometric
  interpretations, planar layouts, compressions and NaN/inf values.
* Mutated files of every supported format and mode, with PNG checksums repaired after
  mutation, through the CLI's whole per-image path (decode, sweep, choose K, segment,
  render, write): it either writes every output or raises the project's ImageError,
  naming the file, and writes nothing.

Bounded (small images, few examples) and deterministic (``derandomize``) for CI.
"""

from __future__ import annotations

import io
import json
import struct
import tempfile
import zlib
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import tifffile
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from robustness_cases import crafted_png, pattern

from pipeline.cli import _segment_one
from pipeline.errors import ImageError
from pipeline.images import LoadedImage, decode_image
from pipeline.render import decode_png
from pipeline.settings import RegionSettings, SegmentSettings
from tests.mutations import mutate, mutation

MAX_PIXELS = 4096
FUZZ = settings(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def assert_refused_or_sound(data: bytes, name: str = "fuzz") -> LoadedImage | None:
    """Decode ``data``: an ImageError naming ``name`` in one line, or a sound image."""
    try:
        image = decode_image(data, name=name, max_pixels=MAX_PIXELS)
    except ImageError as err:
        assert err.path == name and err.reason
        assert "\n" not in str(err) and str(err).startswith(f"{name}: ")
        event(f"refused: {err.reason.split(' (')[0][:40]}")
        return None
    event(f"decoded {image.format} {image.mode}")
    rgb = image.rgb
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.shape[:2] == (image.height, image.width)
    assert 0 < image.width * image.height <= MAX_PIXELS
    assert rgb.flags.c_contiguous and rgb.flags.owndata and not rgb.flags.writeable
    assert image.orientation in range(1, 9) and image.n_frames >= 1 and image.bit_depth >= 1
    json.dumps(image.metadata())
    return image


# --- structured PNG ----------------------------------------------------------------------


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


_VALID_PNG_TYPES = [
    *((0, depth) for depth in (1, 2, 4, 8, 16)),
    *((3, depth) for depth in (1, 2, 4, 8)),
    *((kind, depth) for kind in (2, 4, 6) for depth in (8, 16)),
]


@st.composite
def png_files(draw) -> bytes:
    # Mostly valid headers, sometimes not (zero size, invalid type and depth, interlace 2).
    size = st.integers(-3, 24).map(lambda v: max(v, 0))
    width, height = draw(size), draw(size)
    kinds = [*_VALID_PNG_TYPES, (1, 8), (7, 8), (2, 4), (6, 1)]
    colour_type, bit_depth = draw(st.sampled_from(kinds))
    interlace = draw(st.sampled_from([0, 0, 0, 1, 1, 1, 2]))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, interlace)
    chunks = [_chunk(b"IHDR", header)]
    if draw(st.booleans()):  # a palette of 1-20 colours, or any bytes
        colours = draw(st.integers(1, 20))
        plte = draw(st.binary(min_size=3 * colours, max_size=3 * colours) | st.binary(max_size=61))
        chunks.append(_chunk(b"PLTE", plte))
    if draw(st.booleans()):
        chunks.append(_chunk(b"tRNS", draw(st.binary(max_size=24))))
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour_type, 3)
    row = (width * channels * max(bit_depth, 1) + 7) // 8
    if draw(st.integers(0, 3)):  # mostly rows of the declared size: filter + random samples
        filters = draw(st.lists(st.integers(0, 4), min_size=height, max_size=height))
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        raw = b"".join(bytes([f]) + rng.bytes(row) for f in filters)
    else:
        raw = draw(st.binary(max_size=512))
    chunks.append(_chunk(b"IDAT", zlib.compress(raw)))
    chunks.append(_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


@settings(FUZZ, max_examples=300)
@given(data=png_files())
def test_structured_pngs_decode_or_are_refused(data: bytes) -> None:
    assert_refused_or_sound(data)


# --- structured TIFF ---------------------------------------------------------------------

_DTYPES = ["uint8", "uint16", "int16", "uint32", "int32", "float32", "float64", "bool"]


@st.composite
def tiff_files(draw) -> bytes:
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    samples = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    shape = (height, width) if samples == 1 else (height, width, samples)
    if dtype == np.bool_:
        values = rng.integers(0, 2, shape).astype(bool)
    elif dtype.kind == "f":
        values = rng.normal(0.5, draw(st.sampled_from([0.3, 100.0])), shape).astype(dtype)
        specials = draw(st.lists(st.sampled_from([np.nan, np.inf, -np.inf]), max_size=3))
        values.flat[: len(specials)] = specials
    else:
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    photometric = draw(st.sampled_from(["minisblack", "rgb"] if samples >= 3 else ["minisblack"]))
    kwargs = {"photometric": photometric}
    if samples > 1:
        kwargs["planarconfig"] = draw(st.sampled_from(["contig", "separate"]))
        if draw(st.booleans()):
            extra = samples - (3 if photometric == "rgb" else 1)
            if extra > 0:
                kinds = ["unassalpha", "assocalpha", "unspecified"]
                kwargs["extrasamples"] = [draw(st.sampled_from(kinds)) for _ in range(extra)]
    if dtype != np.bool_ and draw(st.booleans()):
        kwargs["compression"] = "zlib"
    if kwargs.get("planarconfig") == "separate":
        values = np.moveaxis(values, -1, 0)  # tifffile takes separate planes first
    buffer = io.BytesIO()
    try:
        tifffile.imwrite(buffer, values, **kwargs)
    except ValueError:  # a combination tifffile does not write
        assume(False)
    data = buffer.getvalue()
    if draw(st.booleans()):  # then damage one byte of it
        position = draw(st.integers(0, len(data) - 1))
        data = data[:position] + bytes([draw(st.integers(0, 255))]) + data[position + 1 :]
    return data


@settings(FUZZ, max_examples=200)
@given(data=tiff_files())
def test_structured_tiffs_decode_or_are_refused(data: bytes) -> None:
    assert_refused_or_sound(data)


# --- mutated files, through the whole per-image path of kseg segment ---------------------


@cache
def _seeds() -> dict[str, bytes]:
    rgb = pattern(6, 8)
    seeds = {}

    def save(name: str, image: Image.Image, fmt: str, **kwargs) -> None:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **kwargs)
        seeds[name] = buffer.getvalue()

    rgba = np.dstack([rgb, (np.arange(48).reshape(6, 8) * 5).astype(np.uint8)])
    save("png_rgba", Image.fromarray(rgba), "PNG")
    save("png_la", Image.fromarray(rgba[..., [0, 3]]), "PNG")
    palette = Image.fromarray(rgb).quantize(5)
    save("png_palette_trns", palette, "PNG", transparency=0)
    save("bmp", Image.fromarray(rgb), "BMP")
    save("webp", Image.fromarray(rgb), "WEBP", lossless=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    save("jpeg_exif", Image.fromarray(rgb), "JPEG", quality=80, exif=exif)
    save("jpeg_cmyk", Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=80)
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    seeds["gif_animated"] = buffer.getvalue()
    deep = (rgb.astype(np.uint16) * 257)[..., :3]
    raw = b"".join(b"\x00" + r.astype(">u2").tobytes() for r in deep)
    seeds["png_16bit_rgb"] = crafted_png(8, 6, colour_type=2, bit_depth=16, raw=raw)
    buffer = io.BytesIO()
    values = rgb[..., 0].astype(np.float32) / 255
    values[0, :3] = (np.nan, np.inf, -np.inf)
    tifffile.imwrite(buffer, values)
    seeds["tiff_float"] = buffer.getvalue()
    return seeds


def _repair_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk CRC of a (possibly mutated) PNG that still parses as chunks."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, i = bytearray(data[:8]), 8
    while i + 8 <= len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        end = i + 8 + length
        if end + 4 > len(data):
            out += data[i:]
            return bytes(out)
        out += data[i:end] + struct.pack(">I", zlib.crc32(data[i + 4 : end]))
        i = end + 4
    return bytes(out + data[i:])


_MUTATION = mutation(max_insert=8, max_delete=16)


SETTINGS = SegmentSettings(k_min=2, k_max=4)
REGIONS = RegionSettings()  # the default: regions are made too
OUTPUTS = {"segmented", "labels", "overlay", "segments", "elbow", "elbow_plot", "summary",
           "regions", "regions_overlay", "regions_table", "region_merges"}  # fmt: skip


@settings(FUZZ, max_examples=80)
@given(
    seed=st.sampled_from(sorted(_seeds())),
    mutations=st.lists(_MUTATION, min_size=0, max_size=4),
    repair=st.booleans(),
)
def test_mutated_files_through_the_whole_engine(seed: str, mutations, repair: bool) -> None:
    data = mutate(_seeds()[seed], mutations)
    data = _repair_png_crcs(data) if repair else data
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "in" / "fuzz.img"
        path.parent.mkdir()
        path.write_bytes(data)
        out = Path(folder) / "out"
        try:
            summary = _segment_one(str(path), out / "fuzz", SETTINGS, REGIONS, MAX_PIXELS)
        except ImageError as err:
            assert err.path == str(path) and "\n" not in str(err)
            assert not out.exists()  # a refused file writes nothing
            return
        assert set(summary["outputs"]) == OUTPUTS
        assert sorted(p.name for p in (out / "fuzz").iterdir()) == sorted(
            Path(p).name for p in summary["outputs"].values()
        )  # and no temporary file left behind
        labels = decode_png((out / "fuzz" / "labels.png").read_bytes())
        assert labels.shape == (summary["height"], summary["width"])
        assert 1 <= summary["k"] <= min(SETTINGS.k_max, summary["n_colours"])
        assert pq.read_table(out / "fuzz" / "segments.parquet").num_rows == summary["k"]
        regions = decode_png((out / "fuzz" / "regions.png").read_bytes())
        assert regions.shape == labels.shape and int(regions.max()) + 1 == summary["n_regions"]
        assert json.loads((out / "fuzz" / "summary.json").read_text()) == summary
