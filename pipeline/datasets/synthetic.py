"""Generated WebDataset shards for the demo, tests and benchmarks: images of known content,
plus every kind of bad sample the pipeline must turn into an error row."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
from PIL import Image

from pipeline.io.shard_writer import tar_bytes
from pipeline.io.storage import filesystem, is_local, join, write_bytes_atomic

# Samples whose bytes are bad in one way each, with the error type they must produce.
BAD_KINDS = {
    "corrupt": "undecodable",
    "truncated": "undecodable",
    "empty": "empty",
    "bomb": "oversized",
    "text": "undecodable",
    "no_image": "missing_image",
}
# Valid images in unusual modes: they must become descriptors.
ODD_MODES = ("L", "CMYK", "RGBA", "I;16", "P")


def image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random colour field with a few rectangles: compressible, not constant."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy = rng.uniform(0.5, 4, 2).tolist()
        ph = rng.uniform(0, 6.28)
        channels.append(127 + 100 * np.sin(xx / width * fx * 6.28 + yy / height * fy * 6.28 + ph))
    arr = np.stack(channels, -1)
    for _ in range(3):
        x0, y0 = rng.integers(0, width - 1), rng.integers(0, height - 1)
        arr[y0 : y0 + height // 4, x0 : x0 + width // 4] = rng.integers(0, 255, 3)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like image: texture with a natural image's 1/f amplitude spectrum in luminance
    and colour, shaded shapes with hard edges, sensor grain. JPEG compresses it like a photo
    (about 3-4 bits per pixel at quality 90) and a decoder does a photo's work on it, unlike
    the smooth fields of ``image``."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    amplitude = 1.0 / f
    amplitude[0, 0] = 0.0

    def pink() -> np.ndarray:  # (H, W) float32, zero mean, unit variance
        phase = rng.uniform(0, 2 * np.pi, amplitude.shape)
        x = np.fft.irfft2(amplitude * np.exp(1j * phase), s=(height, width))
        return ((x - x.mean()) / (x.std() + 1e-9)).astype(np.float32)

    lum, c1, c2 = pink(), pink(), pink()
    opponent = np.array([[1, 0.3, 0.1], [1, -0.1, 0.2], [1, -0.2, -0.3]], np.float32)
    arr = (np.stack([lum, c1, c2], -1) @ opponent.T) * 40 + rng.uniform(60, 190, 3)
    yy, xx = np.ogrid[0:height, 0:width]
    for _ in range(12):  # objects: shaded by the texture, with hard edges
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(width / 40, width / 6), rng.uniform(height / 40, height / 6)
        if rng.random() < 0.5:
            mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        else:
            mask = (abs(xx - cx) <= rx) & (abs(yy - cy) <= ry)
        colour = rng.uniform(20, 235, 3).astype(np.float32)
        arr[mask] = colour * (1 + 0.15 * lum[mask, None])
    arr += rng.normal(0, 2.0, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str = "JPEG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@lru_cache(maxsize=1)
def bomb_png() -> bytes:
    """A tiny PNG that claims 20000 x 20000 pixels (a decompression bomb)."""
    return encode(Image.new("1", (20000, 20000)), "PNG")


def odd_mode(img: Image.Image, mode: str) -> tuple[str, bytes]:
    if mode == "I;16":
        arr = np.asarray(img.convert("L"), np.uint16) * 257
        return "png", encode(Image.fromarray(arr), "PNG")
    if mode == "CMYK":
        return "jpg", encode(img.convert("CMYK"), "JPEG")
    if mode == "P":
        return "png", encode(img.convert("P"), "PNG")
    return "png", encode(img.convert(mode), "PNG")


def crafted_exif() -> bytes:
    """An EXIF block PIL opens but cannot re-serialise: Orientation=6 (so that
    ``exif_transpose`` rewrites the block) and tag 0x014E (NumberOfInks, a SHORT) stored as
    text, which makes the rewrite raise ``struct.error``."""
    entries = [
        struct.pack("<HHII", 0x0112, 3, 1, 6),  # Orientation, SHORT, 1 value: 6
        struct.pack("<HHI4s", 0x014E, 2, 4, b"txt\0"),  # NumberOfInks as ASCII
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd


def encode_with_exif(img: Image.Image, exif: bytes) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


def bad_sample(kind: str, rng: np.random.Generator) -> dict[str, bytes]:
    good = encode(image(rng, 64, 48))
    if kind == "corrupt":
        return {"jpg": rng.bytes(2000)}
    if kind == "truncated":
        return {"jpg": good[: len(good) // 3]}
    if kind == "empty":
        return {"jpg": b""}
    if kind == "bomb":
        return {"png": bomb_png()}
    if kind == "text":
        return {"jpg": b"this is text, not an image"}
    if kind == "no_image":
        return {"txt": b"caption without an image", "cls": b"3"}
    raise ValueError(f"unknown bad sample kind {kind!r}")


def shard_samples(
    shard: int,
    n_images: int,
    size: tuple[int, int],
    bad: tuple[str, ...],
    odd: tuple[str, ...],
    seed: int,
    portrait_every: int = 4,
) -> Iterator[tuple[str, dict[str, bytes]]]:
    rng = np.random.default_rng([seed, shard])
    for i in range(n_images):
        portrait = portrait_every > 0 and i % portrait_every == 0
        w, h = (size[1], size[0]) if portrait else size
        yield (
            f"s{shard:06d}_{i:05d}",
            {"jpg": encode(image(rng, w, h), quality=90), "cls": str(i % 5).encode()},
        )
    for mode in odd:
        ext, data = odd_mode(image(rng, *size), mode)
        yield f"s{shard:06d}_mode_{mode.replace(';', '')}", {ext: data}
    for kind in bad:
        yield f"s{shard:06d}_bad_{kind}", bad_sample(kind, rng)


def write_shards(
    folder: str,
    n_shards: int,
    images_per_shard: int,
    size: tuple[int, int] = (1024, 768),
    bad: tuple[str, ...] = (),
    odd: tuple[str, ...] = (),
    seed: int = 0,
    portrait_every: int = 4,
) -> list[str]:
    """Write ``n_shards`` shards ``{folder}/000000.tar``, ...; return their URIs."""
    fs, path = filesystem(folder)
    if not is_local(fs):
        bucket = path.split("/", 1)[0]
        if not fs.exists(bucket):
            fs.mkdir(bucket)  # creates the bucket
    uris = []
    for s in range(n_shards):
        uri = join(folder, f"{s:06d}.tar")
        write_bytes_atomic(
            uri, tar_bytes(shard_samples(s, images_per_shard, size, bad, odd, seed, portrait_every))
        )
        uris.append(uri)
    return uris


def write_revisitop_miniature(
    root: str,
    dataset: str = "roxford5k",
    classes: int = 3,
    per_class: int = 4,
    size: tuple[int, int] = (160, 120),
    distractors: int = 6,
    archives: bool = False,
    seed: int = 0,
) -> dict[str, list[str]]:
    """A miniature in revisitop's download layout: ROOT/<dataset>/jpg/*.jpg, the ground truth
    ROOT/<dataset>/gnd_<dataset>.pkl, and ROOT/revisitop1m/ as a jpg/ folder with
    revisitop1m.txt or as revisitop1m.1.tar.gz. Database images of a class are shifted, noisier
    copies of its query image: the first half easy, the rest hard positives."""
    import pickle

    rng = np.random.default_rng(seed)
    w, h = size
    imlist: list[str] = []
    qimlist: list[str] = []
    gnd: list[dict[str, object]] = []
    base = join(root, dataset)
    for c in range(classes):
        scene = np.asarray(image(rng, w, h)).astype(np.float32)
        query = f"query_{c}"
        write_bytes_atomic(
            join(base, "jpg", f"{query}.jpg"), encode(Image.fromarray(scene.astype(np.uint8)))
        )
        qimlist.append(query)
        easy: list[int] = []
        hard: list[int] = []
        for i in range(per_class):
            strength = 8.0 if i < per_class // 2 else 40.0
            shifted = np.roll(scene, (int(rng.integers(-6, 6)), int(rng.integers(-6, 6))), (0, 1))
            noisy = np.clip(shifted + rng.normal(0, strength, shifted.shape), 0, 255)
            name = f"class{c}_{i:03d}"
            write_bytes_atomic(
                join(base, "jpg", f"{name}.jpg"), encode(Image.fromarray(noisy.astype(np.uint8)))
            )
            (easy if i < per_class // 2 else hard).append(len(imlist))
            imlist.append(name)
        gnd.append(
            {"bbx": [w * 0.1, h * 0.1, w * 0.9, h * 0.9], "easy": easy, "hard": hard, "junk": []}
        )
    write_bytes_atomic(
        join(base, f"gnd_{dataset}.pkl"),
        pickle.dumps({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}),
    )
    names = [f"distractor_{i:05d}" for i in range(distractors)]
    r1m = join(root, "revisitop1m")
    images = {n: encode(image(rng, w, h)) for n in names}
    if archives:
        import gzip

        from pipeline.io.shard_writer import tar_bytes

        raw = tar_bytes((f"jpg/{n}", {"jpg": data}) for n, data in images.items())
        write_bytes_atomic(join(r1m, "revisitop1m.1.tar.gz"), gzip.compress(raw))
    else:
        for n, data in images.items():
            write_bytes_atomic(join(r1m, "jpg", f"{n}.jpg"), data)
        write_bytes_atomic(
            join(r1m, "revisitop1m.txt"), "\n".join(f"{n}.jpg" for n in names).encode()
        )
    return {"imlist": imlist, "qimlist": qimlist, "distractors": names}


def class_image(
    rng: np.random.Generator, label: int, classes: int, width: int, height: int
) -> Image.Image:
    """An image of visual class ``label`` of ``classes``: a grating whose orientation is the
    class (θ = π·label/classes) on a random colour field, at a random place, scale, phase,
    frequency and colour: colour tells nothing, structure everything."""
    background = np.asarray(image(rng, width, height), dtype=np.float32) * 0.5
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = np.pi * label / classes + rng.normal(0, 0.05)
    period = rng.uniform(6, 12) * max(width, height) / 128
    phase = (xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period
    wave = np.sin(phase + rng.uniform(0, 6.28))
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    pattern = np.where(wave[..., None] > 0, c1, c2).astype(np.float32)
    bw, bh = int(width * rng.uniform(0.5, 0.8)), int(height * rng.uniform(0.5, 0.8))
    x0, y0 = int(rng.integers(0, width - bw + 1)), int(rng.integers(0, height - bh + 1))
    out = background.copy()
    out[y0 : y0 + bh, x0 : x0 + bw] = pattern[y0 : y0 + bh, x0 : x0 + bw]
    out += rng.normal(0, 8, out.shape)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


# (W, H) shapes of the generated training images: landscape, portrait and square groups.
CLASS_IMAGE_SHAPES = ((96, 72), (72, 96), (80, 80), (112, 64))


def class_samples(
    classes: int, per_class: int, seed: int, key_prefix: str = "img"
) -> list[tuple[str, int, bytes]]:
    """(key, label, JPEG bytes) of ``per_class`` images of each class, in class order."""
    rng = np.random.default_rng([seed, 7])
    out = []
    for label in range(classes):
        for i in range(per_class):
            w, h = CLASS_IMAGE_SHAPES[int(rng.integers(len(CLASS_IMAGE_SHAPES)))]
            data = encode(class_image(rng, label, classes, w, h), quality=90)
            out.append((f"{key_prefix}{label:03d}_{i:04d}", label, data))
    return out


def write_gldv2_miniature(
    root: str, classes: int = 4, per_class: int = 12, seed: int = 0
) -> dict[str, int]:
    """A GLDv2-clean miniature in the download's layout: ROOT/train_clean.csv (landmark_id,
    space-separated image ids) and ROOT/train/<a>/<b>/<c>/<id>.jpg. Landmark ids are sparse,
    as in GLDv2; returns image id -> landmark id."""
    rng = np.random.default_rng([seed, 11])
    landmark_ids = sorted(int(x) for x in rng.choice(200_000, size=classes, replace=False))
    truth: dict[str, int] = {}
    rows = ["landmark_id,images"]
    for _key, label, data in class_samples(classes, per_class, seed):
        image_id = f"{int(rng.integers(16**15)):016x}"
        write_bytes_atomic(
            join(root, "train", image_id[0], image_id[1], image_id[2], f"{image_id}.jpg"), data
        )
        truth[image_id] = landmark_ids[label]
    by_landmark: dict[int, list[str]] = {}
    for image_id, landmark in truth.items():
        by_landmark.setdefault(landmark, []).append(image_id)
    rows += [f"{lm},{' '.join(ids)}" for lm, ids in sorted(by_landmark.items())]
    write_bytes_atomic(join(root, "train_clean.csv"), ("\n".join(rows) + "\n").encode())
    return truth
