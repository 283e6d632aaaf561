"""Image bytes -> fitted pixels -> caption row; the decoding half of the caption converter.

Every image becomes the same grid (`--image-size`, default 192x192 = 144 patches, so the paper's
"up to 5 pairs" plus their captions fit one 1024-token sequence; 224 would not), by a bilinear
resize or an aspect-keeping resize + zero padding at the bottom/right (`--fit pad`). JPEGs are
decoded by libjpeg-turbo (simplejpeg) at the smallest of its M/8 DCT scales that still covers the
target, then resized bilinearly for the rest: a 256 px JPEG decodes straight to 192 px at 3/4
(about 2x faster than Pillow's decode + resize, and closer to a Lanczos reference); others go
through Pillow, with `Image.draft` (1/2, 1/4, 1/8) for large JPEGs. Decoding is fused with the
resize for speed; padding, patches and the row itself come from tokenizer_kit.

Pixel limits apply twice, both before anything is decoded: to the size declared in the header
(what is decoded) and to the size the image is fitted to (what is allocated after the resize;
with `--image-size native` a 60,000,000 x 1 image would become 16 x 60,000,000).
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

import simplejpeg  # libjpeg-turbo's DCT scaling by M/8 (Pillow's draft offers only 1/2, 1/4, 1/8)

from tokenizer_kit.errors import TokenizeError, first_line
from tokenizer_kit.images import MAX_PIXELS, fit_image, pixel_problem, scaled_size, wide_image_to_rgb
from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.sequence import Row
from tokenizer_kit.text_rows import build_caption_row

DEFAULT_IMAGE_SIZE = 192


class BadField(Exception):
    """A record's field that cannot be converted; becomes `FILE: record KEY: field F: reason`."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


def _png_size(data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(W, H) from a PNG header, to name a 0-pixel PNG that Pillow refuses to open."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    return None


@dataclass(frozen=True)
class ImageFit:
    """Decode one encoded image and fit it to `size` (H, W) or, if None, to its own 16-multiple."""

    size: tuple[int, int] | None = (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
    fit: str = "resize"

    def _check_pixels(self, h: int, w: int, field: str) -> None:
        problem = pixel_problem(h, w, self.size, self.fit)  # the one rule (tokenizer_kit.images)
        if problem is not None:
            raise BadField(field, problem)

    def __call__(self, data, field: str = "image") -> np.ndarray:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise BadField(field, f"image is {type(data).__name__}, expected encoded image bytes or a path")
        if not data:
            raise BadField(field, "image is empty (0 bytes)")
        if self.size is not None and data[:2] == b"\xff\xd8" and simplejpeg is not None:
            rgb = self._jpeg(data, field, self.size)
            if rgb is not None:
                return rgb
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im: Image.Image = Image.open(io.BytesIO(data))  # reads the header only
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise BadField(field, f"refused before decoding: {first_line(e)}") from None
        except UnidentifiedImageError:
            wh = _png_size(data)
            if wh is not None and 0 in wh:
                raise BadField(field, f"image has 0 pixels ({wh[0]}x{wh[1]})") from None
            raise BadField(field, "not a readable image (unknown format or corrupt header)") from None
        except Exception as e:  # Pillow raises many types on bad headers
            msg = first_line(e) if str(e) else ""
            raise BadField(field, f"corrupt image header ({type(e).__name__}: {msg})") from None
        w, h = im.size
        self._check_pixels(h, w, field)
        scaled = scaled_size(h, w, self.size, self.fit) if self.size is not None else None
        fmt = im.format or "image"
        try:
            if scaled is not None and im.format == "JPEG":
                im.draft("RGB" if im.mode == "RGB" else None, (scaled[1], scaled[0]))  # DCT scaling
            im.load()  # decodes
            if im.mode in ("I", "F") or im.mode.startswith("I;"):  # 16-bit, 32-bit and float grey
                im = Image.fromarray(wide_image_to_rgb(im, field))
            elif im.mode != "RGB":
                im = im.convert("RGB")
            if scaled is not None and im.size != (scaled[1], scaled[0]):
                im = im.resize((scaled[1], scaled[0]), Image.Resampling.BILINEAR)
            rgb = np.frombuffer(im.tobytes(), np.uint8).reshape(im.height, im.width, 3)  # one copy, not two
        except TokenizeError as e:
            raise BadField(field, str(e).split(": ", 1)[-1]) from None
        except Exception as e:  # truncated / corrupt data: OSError, SyntaxError, ValueError, ...
            raise BadField(field, f"cannot decode {fmt} data: {first_line(e)}") from None
        return fit_image(rgb, self.fit, self.size)

    def _jpeg(self, data: bytes | bytearray | memoryview, field: str, size: tuple[int, int]) -> np.ndarray | None:
        """A YCbCr or grey JPEG decoded by libjpeg-turbo at the smallest of its M/8 DCT scales that
        keeps the fitted size (3/4 takes 256 px straight to 192: no resize left, and closer to a
        Lanczos reference than decode + bilinear), then bilinear for what is left. None: let
        Pillow do it (CMYK, anything simplejpeg refuses; Pillow's messages name what is wrong)."""
        try:
            h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            return None
        if colorspace not in ("YCbCr", "Gray") or not 0 < w * h <= MAX_PIXELS:
            return None
        sh, sw = scaled_size(h, w, size, self.fit)
        try:
            rgb = simplejpeg.decode_jpeg(data, "RGB", min_height=sh, min_width=sw)
        except ValueError:  # corrupt or truncated (strict): Pillow says which
            return None
        if rgb.shape[:2] != (sh, sw):
            rgb = np.asarray(Image.fromarray(rgb).resize((sw, sh), Image.Resampling.BILINEAR))
        return fit_image(rgb, self.fit, size)


def caption_row(rgb: np.ndarray, ids: np.ndarray, layout: VocabLayout) -> Row:
    """The row of a fitted image and its checked caption ids (tokenizer_kit's one rule)."""
    return build_caption_row(rgb, ids, layout)


def caption_text(value, field: str) -> str:
    """A caption as text: bytes must be UTF-8, str must not carry undecodable bytes (surrogates)."""
    if value is None:
        raise BadField(field, "missing caption")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadField(field, f"caption is not UTF-8 (byte 0x{value[e.start]:02x} at offset {e.start})") from None
    if not isinstance(value, str):
        raise BadField(field, f"caption is {type(value).__name__}, expected text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # read with surrogateescape: the file had bytes that are not UTF-8
        raise BadField(field, f"caption is not UTF-8 (undecodable byte at character {e.start})") from None
    value = value.strip()
    if not value:
        raise BadField(field, "missing caption (empty text)")
    return value
