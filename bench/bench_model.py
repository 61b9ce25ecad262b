"""GLAM model throughput at 1024x768 with three scales: research baseline vs tuned paths.

Prints images/s, achieved GFLOP/s and the fraction of the machine's measured matmul peak
(MFU) for fp32 NCHW batch 1, fp32 channels_last, bf16 autocast channels_last, a bare
torchvision ResNet101 for reference, and the cosine between bf16 and fp32 descriptors.

    .venv/bin/python bench/bench_model.py [--repeats 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_seconds, count_gflop, matmul_peak_gflops

from glam import DEFAULT_SCALES, ExtractConfig, GlamExtractor, build_glam


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4, help="batch of the last tuned variant")
    args = parser.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    peak = {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}
    if dev.type == "cuda":
        peak = {
            k: cuda_matmul_peak(d) for k, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))
        }
    print(
        f"# device: {dev} {device_name(dev)}; torch {torch.__version__}; "
        f"threads {torch.get_num_threads()}"
    )
    print(f"# matmul peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")

    model = build_glam(seed=0)
    x = torch.randn(1, 3, args.height, args.width)
    scales_gflop = sum(count_gflop(lambda s=s: model(rescale(x, s))) for s in DEFAULT_SCALES)
    single_gflop = count_gflop(lambda: model(x))
    resnet = torchvision.models.resnet101().eval()
    resnet_gflop = count_gflop(lambda: resnet(x))
    gflop_per_image = scales_gflop
    print(
        f"# GFLOP per image at {args.width}x{args.height}: ResNet101 {resnet_gflop:.0f}, "
        f"GLAM 1 scale {single_gflop:.0f}, GLAM 3 scales {scales_gflop:.0f}"
    )

    variants = [  # name, precision, channels_last, fold BN, batch
        ("fp32 NCHW b1 (research baseline)", "fp32", False, False, 1),
        ("fp32 channels_last b1", "fp32", True, False, 1),
        ("bf16 channels_last b1", "bf16", True, False, 1),
        ("bf16 channels_last + folded BN b1", "bf16", True, True, 1),
        (f"bf16 channels_last + folded BN b{args.batch}", "bf16", True, True, args.batch),
    ]
    print("| variant | images/s | GFLOP/s | MFU |")
    print("| --- | --- | --- | --- |")
    rates = {}
    descriptors = {}
    for name, precision, cl, fold, batch in variants:
        cfg = ExtractConfig(precision=precision, channels_last=cl, fold_batchnorm=fold)
        ex = GlamExtractor(model, cfg, device=str(dev))
        xb = torch.randn(
            batch, 3, args.height, args.width, generator=torch.Generator().manual_seed(1)
        )
        descriptors[name] = ex.extract_batch(xb[:1])
        secs = best_seconds(lambda ex=ex, xb=xb: sync(ex.extract_batch(xb), dev), args.repeats)
        ips = batch / secs
        rates[name] = ips
        gflops = ips * gflop_per_image
        print(f"| {name} | {ips:.3f} | {gflops:.0f} | {gflops / peak[precision]:.1%} |")

    rn = resnet.to(dev).to(memory_format=torch.channels_last)
    xr = torch.randn(1, 3, args.height, args.width, device=dev).contiguous(
        memory_format=torch.channels_last
    )

    def resnet_step() -> None:
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16):
            sync(rn(xr), dev)

    rsec = best_seconds(resnet_step, args.repeats)
    print(
        f"| bare torchvision ResNet101, bf16 channels_last b1, 1 scale | {1 / rsec:.3f} | "
        f"{resnet_gflop / rsec:.0f} | {resnet_gflop / rsec / peak['bf16']:.1%} |"
    )
    base = rates[variants[0][0]]
    for name, *_ in variants[1:]:
        print(f"# speed-up of {name} over the research baseline: {rates[name] / base:.2f}x")
    cos = float(descriptors[variants[0][0]][0] @ descriptors[variants[3][0]][0])
    print(f"# cosine(bf16, fp32) descriptor, 3 scales: {cos:.5f}")
    return 0


def rescale(x: torch.Tensor, s: float) -> torch.Tensor:
    from glam.extract import rescale as _rescale

    return _rescale(x, s)


def sync(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return t


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return platform.processor() or platform.machine()


def cuda_matmul_peak(dtype: torch.dtype, n: int = 8192) -> float:
    a = torch.randn(n, n, dtype=dtype, device="cuda")
    b = torch.randn(n, n, dtype=dtype, device="cuda")
    secs = best_seconds(lambda: sync(a @ b, torch.device("cuda")), repeats=10, warmup=3)
    return 2 * n**3 / secs / 1e9


if __name__ == "__main__":
    sys.exit(main())
