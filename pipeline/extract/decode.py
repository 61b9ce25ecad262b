"""Per-sample decoding with error capture: every sample becomes a uint8 image or an error row."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from glam.preprocess import (
    ImageDecodeError,
    ImageTooLargeError,
    decode_rgb,
    resize_longer_side,
)
from pipeline.io.shard_reader import RawSample


@dataclass(frozen=True)
class DecodedSample:
    index: int  # position in the shard
    key: str
    # uint8 pixels, max(H, W) == image_size: (H, W, 4) RGB + a pad byte on the host (PIL's own
    # buffer, see ``pixels``), or (H, W, 3) on the device after GPU decode; normalised and
    # rescaled on the device (glam.GlamExtractor.stream)
    image: np.ndarray | torch.Tensor
    width: int  # the full image's size (EXIF orientation applied) before resizing
    height: int


def pixels(img: Image.Image) -> np.ndarray:
    """An RGB image's pixels as uint8 (H, W, 4): R, G, B and PIL's pad byte.

    PIL keeps RGB as 4 bytes a pixel; its Arrow export hands that buffer over without a copy
    (``tobytes``/``np.asarray`` repack it to 3 bytes: 1.6 ms of a 1024x768 image's ~7 ms on
    one core, holding the GIL). The pad byte crosses to the device and is dropped there.
    Images whose rows PIL keeps in several blocks (above 16 MiB) are converted instead.
    """
    w, h = img.size
    try:
        flat = pa.array(img).flatten().to_numpy(zero_copy_only=True)
    except ValueError:  # rows not contiguous in memory
        return np.asarray(img.convert("RGBA"))
    return flat.reshape(h, w, 4)


@dataclass(frozen=True)
class SampleError:
    index: int
    key: str
    # missing_image | empty | oversized | undecodable, or a reader problem: duplicate_key,
    # duplicate_member, link_member, no_extension, hidden_member, reserved_member
    error: str
    message: str


def image_bytes(index: int, raw: RawSample) -> bytes | SampleError:
    """The sample's image member, or the error row of a sample the reader could not use, of
    one without an image member, or of an empty one."""
    if raw.problem is not None:  # a member or sample the reader could not use
        kind, message = raw.problem
        return SampleError(index, raw.key, kind, message)
    data = raw.image_member()
    if data is None:
        members = ", ".join(sorted(raw.members)) or "none"
        return SampleError(index, raw.key, "missing_image", f"no image member (has: {members})")
    if not data:
        return SampleError(index, raw.key, "empty", "image member has 0 bytes")
    return data


def decode_sample(
    index: int,
    raw: RawSample,
    image_size: int,
    max_pixels: int,
    draft_side: int | None = None,
) -> DecodedSample | SampleError:
    """Decode on the CPU: RGB, EXIF orientation, longer side to ``image_size`` (PIL bilinear),
    uint8. ``draft_side``: decode large JPEGs in the DCT domain down to about that side."""
    data = image_bytes(index, raw)
    if isinstance(data, SampleError):
        return data
    return decode_bytes(index, raw.key, data, image_size, max_pixels, draft_side)


def decode_bytes(
    index: int,
    key: str,
    data: bytes,
    image_size: int,
    max_pixels: int,
    draft_side: int | None = None,
) -> DecodedSample | SampleError:
    try:
        rgb, (width, height) = decode_rgb(data, max_pixels=max_pixels, draft_side=draft_side)
        x = pixels(resize_longer_side(rgb, image_size))  # (H, W, 4)
    except ImageDecodeError as e:
        kind = "oversized" if isinstance(e, ImageTooLargeError) else "undecodable"
        return SampleError(index, key, kind, str(e)[:500])
    except (OSError, ValueError, MemoryError) as e:  # conversion of exotic modes
        return SampleError(index, key, "undecodable", f"{type(e).__name__}: {e}"[:500])
    return DecodedSample(index, key, x, width, height)
