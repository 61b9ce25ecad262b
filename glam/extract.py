"""Descriptor extraction: multi-scale test, same-size batching, and the fast path
(``inference_mode``, channels_last, optional bf16 autocast), fed with uint8 images that are
normalised and rescaled on the device; the precision that fits the hardware."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as Fn

from glam.batching import SizeBuckets
from glam.batchnorm_fold import fold_batchnorm
from glam.config import ExtractConfig
from glam.model import GLAM
from glam.preprocess import normalize

log = logging.getLogger(__name__)

T = TypeVar("T")
# uint8 pixels (H, W, 3|4): R, G, B (and a pad byte), an array or a tensor on any device
Pixels = np.ndarray | torch.Tensor
Precision = Literal["fp32", "bf16"]
PRECISIONS = ("auto", "fp32", "bf16")
# bf16 autocast against fp32 where the CPU has no native bf16 (AVX2 only: a 3x3 convolution
# ran 580 ms in bf16 against 53 ms in fp32).
EMULATED_BF16_SLOWDOWN = 11


def cpu_has_native_bf16() -> bool:
    """oneDNN runs bf16 on this CPU, in AVX512-BF16 or AMX instructions (not emulated)."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def cuda_has_native_bf16(device: torch.device) -> bool:
    """The CUDA device computes bf16 natively (compute capability 8.0 and later)."""
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return cuda_has_native_bf16(device)
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """``auto``: bf16 where ``device`` computes it natively (CUDA with compute capability >= 8,
    CPUs with AVX512-BF16 or AMX), fp32 elsewhere. An explicit ``bf16`` where it is emulated
    is kept, with a one-line warning naming the expected slowdown."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    native = native_bf16(device)
    if requested == "auto":
        return "bf16" if native else "fp32"
    if requested == "bf16" and not native:
        log.warning(
            "precision bf16 on %s without native bf16 (no AVX512-BF16/AMX, or a GPU before "
            "compute capability 8.0): expect it ~%dx slower than fp32; use --precision auto",
            device.type,
            EMULATED_BF16_SLOWDOWN,
        )
    return "bf16" if requested == "bf16" else "fp32"


def _on_device(im: Pixels) -> bool:
    return isinstance(im, torch.Tensor) and im.device.type != "cpu"


def select_device(prefer: str | None = None) -> torch.device:
    """``prefer`` if given, else CUDA when torch sees a device, else the CPU."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[None]:
    """Autocast to ``dtype`` on ``device``'s type; ``None``: plain fp32 (a no-op context)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def rescale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinear resize of a batch (B, 3, H, W) by ``scale`` (the multi-resolution test)."""
    if scale == 1.0:
        return x
    h, w = x.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return Fn.interpolate(x, size=size, mode="bilinear", align_corners=False)


@dataclass
class _InFlight(Generic[T]):
    """A batch whose descriptors are being computed (and copied back) asynchronously."""

    tag: T
    descriptors: torch.Tensor  # (B, dim) float32 on the CPU once ``done`` has fired
    done: torch.cuda.Event | None  # None: computed synchronously (CPU)


class GlamExtractor:
    """Callable that turns preprocessed images into unit-norm multi-scale descriptors.

    Holds an eval-mode model on ``device``; plain Python, usable with or without Ray.
    ``extract_batch`` takes normalised float images; ``extract_images`` and ``stream`` take uint8
    images (H, W, 3), which cross to the device as uint8 (pinned memory and a copy stream of
    their own on CUDA) and are normalised and rescaled there.
    """

    def __init__(
        self, model: GLAM, config: ExtractConfig | None = None, device: str | None = None
    ) -> None:
        self.config = config or ExtractConfig()
        self.device = select_device(device)
        memory_format = (
            torch.channels_last if self.config.channels_last else torch.contiguous_format
        )
        self.memory_format = memory_format
        if self.config.fold_batchnorm:
            model = fold_batchnorm(model)
        self.model = model.eval().to(self.device).to(memory_format=memory_format)
        # Host-to-device copies run on a stream of their own, beside the model's compute.
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    @torch.inference_mode()
    def extract_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Descriptors (B, dim) float32 on the CPU from same-size normalised images
        (B, 3, H, W)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        x = x.to(self.device, non_blocking=True)
        return self._descriptors(x).cpu()

    def extract_images(self, images: Sequence[Pixels]) -> torch.Tensor:
        """Descriptors (B, dim) float32 on the CPU from same-size uint8 images (H, W, 3|4)."""
        ((_, d),) = self.stream([(None, images)])
        return d

    def stream(
        self, batches: Iterable[tuple[T, Sequence[Pixels]]]
    ) -> Iterator[tuple[T, torch.Tensor]]:
        """Descriptors of each batch of same-size uint8 images (H, W, 3|4; arrays or tensors,
        on the host or the device), in order, with its tag.

        On CUDA the next batch is taken, copied and queued before this one's result is waited
        for: its copy overlaps this batch's compute and the device never waits on the host
        between two batches. Elsewhere each batch is computed when it is taken.
        """
        pending: _InFlight[T] | None = None
        for tag, images in batches:
            launched = self._launch(tag, images)
            if pending is not None:
                yield self._finish(pending)
            pending = launched
        if pending is not None:
            yield self._finish(pending)

    @torch.inference_mode()
    def _launch(self, tag: T, images: Sequence[Pixels]) -> _InFlight[T]:
        x = normalize(self._stage(images))  # (B, 3, H, W) float32, channels_last
        d = self._descriptors(x)
        if self.device.type != "cuda":
            return _InFlight(tag, d.cpu(), None)
        host = torch.empty(d.shape, dtype=d.dtype, pin_memory=True)
        host.copy_(d, non_blocking=True)  # queued behind the compute on the same stream
        done = torch.cuda.Event()
        done.record()
        return _InFlight(tag, host, done)

    @staticmethod
    def _finish(batch: _InFlight[T]) -> tuple[T, torch.Tensor]:
        if batch.done is not None:
            batch.done.synchronize()  # this batch only: the next one keeps the device busy
        return batch.tag, batch.descriptors

    def _stage(self, images: Sequence[Pixels]) -> torch.Tensor:
        """Same-size uint8 images (H, W, 3|4) -> (B, H, W, 3|4) uint8 on the device.

        Host images (arrays or tensors) are stacked once, into pinned memory on CUDA, and copied
        on the copy stream; the compute stream waits for that copy only, so the next batch's
        copy overlaps this one's compute. Images already on the device (decoded there) are
        stacked there. A batch mixing both keeps its order (and drops the host's pad byte).
        """
        if not images:
            raise ValueError("an empty batch")
        sizes = {tuple(im.shape[:2]) for im in images}
        if len(sizes) != 1 or any(im.ndim != 3 or im.shape[-1] not in (3, 4) for im in images):
            shapes = sorted({tuple(im.shape) for im in images})
            raise ValueError(f"expected same-size uint8 images (H, W, 3|4), got shapes {shapes}")
        on_host = [i for i, im in enumerate(images) if not _on_device(im)]
        on_device = [i for i, im in enumerate(images) if _on_device(im)]
        parts = []
        if on_host:
            parts.append(self._copy_in([np.asarray(images[i]) for i in on_host]))
        if on_device:
            device_images = [torch.as_tensor(images[i]) for i in on_device]
            if self.device.type == "cuda":
                compute = torch.cuda.current_stream(self.device)
                for im in device_images:  # decoded on another stream: keep them for this one
                    im.record_stream(compute)
            parts.append(torch.stack(device_images).to(self.device))
        if len(parts) == 1:
            return parts[0]
        x = torch.cat([p[..., :3] for p in parts])
        order = on_host + on_device  # back to the batch's order
        return x[torch.tensor(sorted(range(len(order)), key=order.__getitem__), device=x.device)]

    def _copy_in(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """Host arrays (H, W, C) -> one (B, H, W, C) uint8 tensor on the device."""
        shape = (len(arrays), *arrays[0].shape)
        if self._copy_stream is None:
            return torch.from_numpy(np.stack(arrays)).to(self.device)
        pinned = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        np.stack(arrays, out=pinned.numpy())  # the one host copy, straight into pinned memory
        with torch.cuda.stream(self._copy_stream):
            x = pinned.to(self.device, non_blocking=True)
        compute = torch.cuda.current_stream(self.device)
        compute.wait_stream(self._copy_stream)
        x.record_stream(compute)  # made on the copy stream, used and freed on this one
        return x

    def _descriptors(self, x: torch.Tensor) -> torch.Tensor:
        """d = L2(Σ_s GLAM(rescale(x, s))) (B, dim) on the device, from normalised images
        (B, 3, H, W) on the device: averaged over the scales, then re-normalised."""
        x = x.contiguous(memory_format=self.memory_format)
        total = None
        dtype = torch.bfloat16 if self.config.precision == "bf16" else None
        with torch.inference_mode(), autocast(self.device, dtype):
            for s in self.config.scales:
                xs = rescale(x, s).contiguous(memory_format=self.memory_format)
                d = self.model(xs).float()  # (B, dim), unit norm
                total = d if total is None else total + d
        assert total is not None  # scales is non-empty (ExtractConfig validates it)
        return Fn.normalize(total, dim=-1)

    def __call__(self, images: Sequence[torch.Tensor], batch_size: int = 8) -> torch.Tensor:
        """Descriptors (N, dim) for images of any sizes, in input order; same-size images
        are batched together, at most ``batch_size`` at a time."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        out = torch.empty(len(images), self.model.config.dim)
        buckets: SizeBuckets[int] = SizeBuckets(batch_size, lambda i: tuple(images[i].shape))
        batches = [batch for i in range(len(images)) for batch in buckets.add(i)]
        for idx in batches + buckets.flush():
            out[idx] = self.extract_batch(torch.stack([images[i] for i in idx]))
        return out
