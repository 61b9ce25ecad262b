"""JPEG decode on the GPU (``--decode gpu``): baseline JPEGs go in batches through nvjpeg
(``torchvision.io.decode_jpeg(device="cuda")``); what it cannot take is decoded on the CPU, one
sample at a time, so that every sample still ends as a descriptor or an error row.

The choice is made per sample from the JPEG's markers, read without decoding (``route``): the
device takes 8-bit baseline or extended-sequential Huffman JPEGs with 1 or 3 components that
end with an end-of-image marker. Everything else goes to the CPU: other formats, CMYK/YCCK and
RGB-coded (Adobe transform 0) JPEGs, progressive, arithmetic-coded, lossless and 12-bit ones,
truncated files, images over the pixel limit (the CPU path makes their error rows), and samples
with several image members (the CPU path tries them in turn and makes a row for each). A batch
the device decoder refuses is retried one sample at a time on the device, and a sample it still
refuses is decoded on the CPU. The device images get the EXIF orientation and the antialiased
longer-side resize on the device (``glam.preprocess.orient``, ``resize_uint8``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from glam.preprocess import orient, orientation_of, resize_uint8
from pipeline.extract.decode import (
    DecodedSample,
    Item,
    SampleError,
    decode_sample,
    image_bytes,
    sample_rows,
)
from pipeline.io.shard_reader import RawSample

log = logging.getLogger(__name__)

# Start-of-frame markers the device decoder takes: baseline and extended sequential (Huffman).
DEVICE_SOF = (0xC0, 0xC1)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length
_SOS, _APP1, _APP14 = 0xDA, 0xE1, 0xEE


@dataclass(frozen=True)
class JpegHeader:
    """What the routing needs from a JPEG, read from its markers without decoding."""

    sof: int  # the start-of-frame marker (0xC0 baseline, 0xC2 progressive, ...)
    bits: int  # sample precision
    width: int
    height: int
    components: int
    adobe_transform: int | None  # APP14 "Adobe" colour transform, when present
    has_exif: bool


def read_header(data: bytes) -> JpegHeader | None:
    """The JPEG's frame header, or None when ``data`` is no JPEG or its markers are broken."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, sof, adobe, exif = 2, None, None, False
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _NO_LENGTH:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        body = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(body) != length - 2:
            return None
        if marker in _SOF and len(body) >= 6:
            bits, height, width, components = struct.unpack(">BHHB", body[:6])
            sof = (marker, bits, width, height, components)
        elif marker == _APP14 and body[:5] == b"Adobe" and len(body) >= 12:
            adobe = body[11]
        elif marker == _APP1 and body[:6] == b"Exif\x00\x00":
            exif = True
        elif marker == _SOS:
            break
        pos += 2 + length
    if sof is None:
        return None
    marker, bits, width, height, components = sof
    return JpegHeader(marker, bits, width, height, components, adobe, exif)


def device_refusal(data: bytes, header: JpegHeader | None, max_pixels: int) -> str | None:
    """Why the device decoder should not take this sample (None: it can)."""
    if header is None:
        return "not a JPEG, or unreadable markers"
    if header.sof not in DEVICE_SOF:
        return "progressive" if header.sof in (0xC2, 0xC6, 0xCA, 0xCE) else f"SOF {header.sof:#x}"
    if header.bits != 8:
        return f"{header.bits}-bit samples"
    if header.components == 4:
        return "CMYK/YCCK"
    if header.components not in (1, 3):
        return f"{header.components} components"
    if header.components == 3 and header.adobe_transform == 0:
        return "RGB-coded (Adobe transform 0)"
    if header.width * header.height > max_pixels or not header.width or not header.height:
        return "size over the pixel limit or zero"
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return "no end-of-image marker (truncated?)"
    return None


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag of JPEG bytes, read as the CPU path reads it
    (``glam.preprocess.orientation_of``: 1 when absent or unreadable)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return orientation_of(img)
    except Exception:  # bytes PIL cannot open: shown as stored
        return 1


@dataclass(frozen=True)
class Routed:
    """A sample the device decoder takes (its one image member's bytes and header)."""

    index: int
    raw: RawSample
    data: bytes
    header: JpegHeader

    @property
    def key(self) -> str:
        return self.raw.key


SEVERAL_IMAGES = "several image members"


def route(
    samples: Sequence[tuple[int, RawSample]], max_pixels: int
) -> tuple[list[Routed], list[tuple[int, RawSample]], list[SampleError], dict[str, int]]:
    """Split samples into those for the device, those for the CPU path (``decode_sample``), and
    error rows of samples without image bytes; with the count of CPU samples per reason.
    Samples with several image members go to the CPU path, which decides which member gives
    the descriptor and makes the others' rows."""
    device: list[Routed] = []
    cpu: list[tuple[int, RawSample]] = []
    errors: list[SampleError] = []
    reasons: dict[str, int] = {}
    for index, raw in samples:
        if raw.problem is None and len(raw.image_members()) > 1:
            cpu.append((index, raw))
            reasons[SEVERAL_IMAGES] = reasons.get(SEVERAL_IMAGES, 0) + 1
            continue
        data = image_bytes(index, raw)
        if isinstance(data, SampleError):
            errors.append(data)
            continue
        header = read_header(data)
        why = device_refusal(data, header, max_pixels)
        if why is None and header is not None:
            device.append(Routed(index, raw, data, header))
        else:
            cpu.append((index, raw))
            reasons[why or "?"] = reasons.get(why or "?", 0) + 1
    return device, cpu, errors, reasons


def torchvision_decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """``torchvision.io.decode_jpeg`` of a batch to RGB (3, H, W) uint8 on ``device``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # deprecated in torchvision 0.29 in favour of TorchCodec
        warnings.simplefilter("ignore")
        out = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return out if isinstance(out, list) else [out]


Decoder = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]


class DeviceJpegDecoder:
    """Decodes chunks of samples: the device takes what it can, the CPU the rest.

    One decode at a time on the device, on a stream of its own; a chunk's device images are
    ready (the stream synchronised) when ``decode`` returns them.
    """

    def __init__(
        self,
        device: torch.device,
        image_size: int,
        max_pixels: int,
        draft_side: int | None,
        crop_scale: str = "full_image",
        decoder: Decoder = torchvision_decode,
    ) -> None:
        self.device = device
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.draft_side = draft_side
        self.crop_scale = crop_scale  # query crops are PNGs: decoded on the CPU path
        self.decoder = decoder
        self._lock = threading.Lock()
        self._stream: Any = torch.cuda.Stream(device) if device.type == "cuda" else None

    def decode(self, samples: Sequence[tuple[int, RawSample]]) -> tuple[list[Item], int]:
        """Every sample's rows (an image or an error row, then the rows of its other image
        members: ``sample_rows``), in the order given; and how many images the device
        decoded."""
        device, cpu, out, reasons = route(samples, self.max_pixels)
        results: list[Item] = list(out)
        if reasons:
            log.debug("decoded on the CPU: %s", reasons)
        images = self._on_device(device) if device else {}
        for r in device:
            if r.index not in images:
                cpu.append((r.index, r.raw))
                continue
            x, swapped = images[r.index]
            w, h = r.header.width, r.header.height
            results.append(DecodedSample(r.index, r.key, x, *((h, w) if swapped else (w, h))))
        for index, raw in cpu:
            item = decode_sample(
                index, raw, self.image_size, self.max_pixels, self.draft_side, self.crop_scale
            )
            results.extend(sample_rows(item))
        results.sort(key=lambda item: item.index)  # stable: a sample's rows stay in order
        return results, len(images)

    def _on_device(self, routed: list[Routed]) -> dict[int, tuple[torch.Tensor, bool]]:
        """index -> ((H, W, 3) uint8 on the device, whether the orientation swapped the
        sides), for the samples the device decoded."""
        out = {}
        with self._lock, self._stream_context():
            raw = self._decode_all(routed)
            for r in routed:
                x = raw.get(r.index)
                if x is None:
                    continue
                o = exif_orientation(r.data) if r.header.has_exif else 1
                out[r.index] = (resize_uint8(orient(x, o), self.image_size), o in (5, 6, 7, 8))
            if self._stream is not None:
                self._stream.synchronize()
        return out

    def _decode_all(self, routed: list[Routed]) -> dict[int, torch.Tensor]:
        """The batch in one call; if the decoder refuses it, each sample alone."""
        tensors = [torch.frombuffer(bytearray(r.data), dtype=torch.uint8) for r in routed]
        try:
            return {
                r.index: x for r, x in zip(routed, self.decoder(tensors, self.device), strict=True)
            }
        except Exception as e:  # one bad sample fails the whole batch: find it
            log.debug("device decode of %d samples failed (%s); one by one", len(routed), e)
        out = {}
        for r, t in zip(routed, tensors, strict=True):
            try:
                (out[r.index],) = self.decoder([t], self.device)
            except Exception as e:  # the CPU decides: an image or an error row
                log.debug("device decode of %s failed (%s); on the CPU", r.key, e)
        return out

    def _stream_context(self) -> contextlib.AbstractContextManager[Any]:
        if self._stream is None:
            return contextlib.nullcontext()
        return torch.cuda.stream(self._stream)
