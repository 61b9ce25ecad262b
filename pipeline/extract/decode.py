"""Per-sample decoding with error capture: every sample becomes a tensor or an error row."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glam.preprocess import (
    ImageDecodeError,
    ImageTooLargeError,
    decode_image,
    resize_longer_side,
    to_rgb,
    to_tensor,
)
from pipeline.io.shard_reader import RawSample


@dataclass(frozen=True)
class DecodedSample:
    index: int  # position in the shard
    key: str
    image: torch.Tensor  # (3, H, W), ImageNet-normalised, max(H, W) == image_size
    width: int  # decoded size (EXIF orientation applied) before resizing
    height: int


@dataclass(frozen=True)
class SampleError:
    index: int
    key: str
    # missing_image | empty | oversized | undecodable, or a reader problem: duplicate_key,
    # duplicate_member, link_member, no_extension, hidden_member, reserved_member
    error: str
    message: str


def decode_sample(
    index: int, raw: RawSample, image_size: int, max_pixels: int
) -> DecodedSample | SampleError:
    if raw.problem is not None:  # a member or sample the reader could not use
        kind, message = raw.problem
        return SampleError(index, raw.key, kind, message)
    data = raw.image_member()
    if data is None:
        members = ", ".join(sorted(raw.members)) or "none"
        return SampleError(index, raw.key, "missing_image", f"no image member (has: {members})")
    if not data:
        return SampleError(index, raw.key, "empty", "image member has 0 bytes")
    try:
        rgb = to_rgb(decode_image(data, max_pixels=max_pixels))  # EXIF orientation applied
        width, height = rgb.size
        x = to_tensor(resize_longer_side(rgb, image_size))  # == glam.preprocess(img, size)
    except ImageDecodeError as e:
        kind = "oversized" if isinstance(e, ImageTooLargeError) else "undecodable"
        return SampleError(index, raw.key, kind, str(e)[:500])
    except (OSError, ValueError, MemoryError) as e:  # conversion of exotic modes
        return SampleError(index, raw.key, "undecodable", f"{type(e).__name__}: {e}"[:500])
    return DecodedSample(index, raw.key, x, width, height)
