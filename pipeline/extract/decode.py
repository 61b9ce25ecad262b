"""Per-sample decoding with error capture: every sample becomes a uint8 image or an error row,
and every other image member of a sample a row of its own (``decode_sample``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

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
from pipeline.io.shard_reader import FULL_SIZE_TEXT, RawSample

QUERY_CROP_SCALES = ("full_image", "crop")

# The part of each member's error message kept in the row of a sample none of whose members
# decodes (the row names every member).
MEMBER_MESSAGE_CHARS = 200


@dataclass(frozen=True)
class SampleError:
    index: int  # position in the shard (of the sample, also for a row of one of its members)
    key: str  # the sample's key, or ``<key>.<ext>`` for a row of one of its image members
    # missing_image | empty | oversized | undecodable | extra_image, or a reader problem:
    # duplicate_key, duplicate_member, link_member, no_extension, hidden_member, reserved_member
    error: str
    message: str


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
    # The rows of the sample's other image members (see ``decode_sample``); ``sample_rows``
    # hands them out as rows of their own.
    other_members: tuple[SampleError, ...] = ()


Item = DecodedSample | SampleError


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


def image_members(index: int, raw: RawSample) -> list[tuple[str, bytes]] | SampleError:
    """The sample's image members as (extension, bytes) in the order they are tried
    (``RawSample.image_members``), or the error row of a sample the reader could not use or
    of one without an image member."""
    if raw.problem is not None:  # a member or sample the reader could not use
        kind, message = raw.problem
        return SampleError(index, raw.key, kind, message)
    members = raw.image_members()
    if not members:
        names = ", ".join(sorted(raw.members)) or "none"
        return SampleError(index, raw.key, "missing_image", f"no image member (has: {names})")
    return members


def image_bytes(index: int, raw: RawSample) -> bytes | SampleError:
    """The bytes of the sample's first image member, or the error row of a sample the reader
    could not use, of one without an image member, or of an empty member."""
    members = image_members(index, raw)
    if isinstance(members, SampleError):
        return members
    data = members[0][1]
    return data if data else _empty(index, raw.key)


def decode_sample(
    index: int,
    raw: RawSample,
    image_size: int,
    max_pixels: int,
    draft_side: int | None = None,
    crop_scale: str = "full_image",
    resize: str = "bilinear",
) -> Item:
    """Decode on the CPU: RGB, EXIF orientation, longer side to ``image_size`` (``resize``: PIL
    bilinear, or cirtorch's LANCZOS thumbnail that never enlarges), uint8. ``draft_side``:
    decode large JPEGs in the DCT domain down to about that side.

    The image members are tried in turn; the first that decodes is the sample's image, keyed
    by the sample. Each other member is a row keyed ``<key>.<ext>`` (``other_members``): those
    tried before it with their own error, those after it as ``extra_image`` (not decoded).
    When none decodes, the sample is one error row: the first member's error type, every
    member's failure in the message. A sample with one image member costs one decode.

    ``crop_scale``: how a query crop (an image carrying ``FULL_SIZE_TEXT``) is sized.
    ``full_image`` (the protocol's reference code, cirtorch's ``ImagesFromList``): by the full
    image's factor, longer side ``floor(image_size * max(crop) / max(full))``; ``crop``: like
    any image, longer side ``image_size`` (usually an enlargement).
    """
    members = image_members(index, raw)
    if isinstance(members, SampleError):
        return members
    failed: list[tuple[str, SampleError]] = []
    for n, (ext, data) in enumerate(members):
        item = decode_bytes(
            index, raw.key, data, image_size, max_pixels, draft_side, crop_scale, resize
        )
        if isinstance(item, SampleError):
            failed.append((ext, item))
            continue
        others = [_member_row(raw.key, e, error) for e, error in failed]
        others += [_extra_image(index, raw.key, e, ext) for e, _ in members[n + 1 :]]
        return replace(item, other_members=tuple(others)) if others else item
    return _none_decoded(index, raw.key, failed)


def sample_rows(item: Item) -> list[Item]:
    """A sample's rows: its own, then those of its other image members (each row once, all at
    the sample's position, so that sorting by position keeps a sample's rows together)."""
    if isinstance(item, SampleError) or not item.other_members:
        return [item]
    return [replace(item, other_members=()), *item.other_members]


def _empty(index: int, key: str) -> SampleError:
    return SampleError(index, key, "empty", "image member has 0 bytes")


def _member_row(key: str, ext: str, error: SampleError) -> SampleError:
    """A failed member's error as a row of its own, keyed by the member's name."""
    return replace(error, key=f"{key}.{ext}")


def _extra_image(index: int, key: str, ext: str, used: str) -> SampleError:
    message = (
        f"another image member of sample {key}; only the first decodable one ({used}) "
        "gives a descriptor"
    )
    return SampleError(index, f"{key}.{ext}", "extra_image", message)


def _none_decoded(index: int, key: str, failed: list[tuple[str, SampleError]]) -> SampleError:
    """The one row of a sample none of whose image members decodes: a single member's own
    error, or the first member's type with every member's failure."""
    if len(failed) == 1:
        return failed[0][1]
    parts = "; ".join(f"{ext}: {e.error} ({e.message[:MEMBER_MESSAGE_CHARS]})" for ext, e in failed)
    return SampleError(index, key, failed[0][1].error, f"no image member decodes: {parts}")


def crop_side(img: Image.Image, image_size: int) -> int:
    """The longer side a query crop is scaled to: ``floor(image_size * max(crop) /
    max(full))`` as cirtorch computes it (PIL's ``thumbnail`` floors the size it is given),
    for an image that carries its full image's size (``FULL_SIZE_TEXT``); ``image_size`` for
    any other image."""
    text = img.info.get(FULL_SIZE_TEXT)
    if not isinstance(text, str):
        return image_size
    try:
        full = max(int(v) for v in text.split("x", 1))
    except ValueError:
        raise ValueError(f"{FULL_SIZE_TEXT} {text[:40]!r} is not WIDTHxHEIGHT") from None
    if full < max(img.size):
        raise ValueError(f"a crop of {img.size} cannot come from an image of {text[:40]}")
    return max(1, math.floor(image_size * max(img.size) / full))


def decode_bytes(
    index: int,
    key: str,
    data: bytes,
    image_size: int,
    max_pixels: int,
    draft_side: int | None = None,
    crop_scale: str = "full_image",
    resize: str = "bilinear",
) -> Item:
    """Decode one image member's bytes as the sample ``key`` (see ``decode_sample``): the image,
    or an ``empty``, ``oversized`` or ``undecodable`` error row."""
    if not data:
        return _empty(index, key)
    try:
        rgb, (width, height) = decode_rgb(data, max_pixels=max_pixels, draft_side=draft_side)
        side = crop_side(rgb, image_size) if crop_scale == "full_image" else image_size
        x = pixels(resize_longer_side(rgb, side, resize))  # (H, W, 4)
    except ImageDecodeError as e:
        kind = "oversized" if isinstance(e, ImageTooLargeError) else "undecodable"
        return SampleError(index, key, kind, str(e)[:500])
    except Exception as e:  # an image must never fail its shard: its row says why
        return SampleError(index, key, "undecodable", f"{type(e).__name__}: {e}"[:500])
    return DecodedSample(index, key, x, width, height)
