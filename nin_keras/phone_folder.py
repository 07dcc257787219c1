"""``python -m nin_keras.phone_folder OUT``: a folder of generated photos stored the way phones store them.

Two classes, ``top`` and ``bottom``: where a bright bar sits in the
*upright* picture (a horizontal flip keeps the class; a 90° turn does not).
Files cycle through what phones and browsers write: JPEGs stored turned with
the EXIF Orientation tag (6 and 8, as a phone held upright stores a portrait
photo), progressive JPEGs, motion photos (an MP4 after the JPEG's end
marker), PNG, WebP and, with pillow-heif installed, HEIC; every third file
sits in a dated sub-folder. ``--large`` writes 12-megapixel (4000x3000)
JPEGs instead, for throughput and memory measurements. No real photo folder
is available offline; the tests, README's figures and the benchmark use this.
"""

import os

import numpy as np

CLASSES = ("bottom", "top")
# What Pillow's exif_transpose applies for each tag value; the stored pixels get the inverse.
_STORED_TURN = {6: "ROTATE_90", 8: "ROTATE_270"}


def scene(label, size, rng):
    """An upright picture (PIL image, ``size`` = (width, height)): textured background, a bright bar in the
    top (label 1) or bottom (0) third, a distractor blob anywhere."""
    from PIL import Image

    width, height = size
    small = rng.integers(40, 150, (12, 9, 3)).astype(np.uint8)  # low-frequency colour texture
    image = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC)).astype(np.int16)
    bar_h = int(height * rng.uniform(0.08, 0.14))
    y0 = int(height * rng.uniform(0.05, 0.2)) if label == 1 else int(height * rng.uniform(0.66, 0.8))
    x0, x1 = sorted(int(width * v) for v in rng.uniform(0.05, 0.95, 2))
    x1 = max(x1, x0 + width // 3)
    image[y0:y0 + bar_h, x0:x1] = 235 + rng.integers(0, 20)
    cy, cx, r = int(rng.uniform(0.3, 0.7) * height), int(rng.uniform(0.1, 0.9) * width), width // 12
    image[max(cy - r, 0):cy + r, max(cx - r, 0):cx + r] = rng.integers(0, 255, 3)
    image += rng.integers(-6, 7, image.shape, dtype=np.int16)  # sensor noise
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def _save(picture, path, kind, heif):
    """Save ``picture`` (upright) as ``kind``; returns the path written."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F] = "Google"  # Make
    if kind in ("jpeg-6", "jpeg-8", "motion"):
        orientation = 8 if kind == "jpeg-8" else 6
        exif[0x0112] = orientation
        picture = picture.transpose(getattr(Image.Transpose, _STORED_TURN[orientation]))
    if kind == "png":
        picture.save(path + ".png")
        return path + ".png"
    if kind == "webp":
        picture.save(path + ".webp", quality=90, exif=exif)
        return path + ".webp"
    if kind == "heic" and heif:
        picture.save(path + ".heic", quality=90)
        return path + ".heic"
    picture.save(path + ".jpg", quality=90, exif=exif, progressive=kind == "progressive")
    if kind == "motion":  # a Pixel-style motion photo: the video follows the JPEG's end marker
        with open(path + ".jpg", "ab") as f:
            f.write(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + os.urandom(4096))
    return path + ".jpg"


KINDS = ("jpeg-6", "jpeg", "jpeg-8", "progressive", "motion", "png", "webp", "heic")


def write_phone_folder(root, per_class=100, seed=0, size=(480, 640), large=False):
    """Write ``per_class`` photos per class into ``root/<class>/`` (see the module doc); returns the file count."""
    from nin_keras.data.folders import _heif_opener

    heif = _heif_opener()
    rng = np.random.default_rng(seed)
    count = 0
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            kind = "jpeg-6" if large and i % 2 else "jpeg" if large else KINDS[i % len(KINDS)]
            picture = scene(label, (3000, 4000) if large else size, rng)
            folder = os.path.join(root, name, "2024-03" if i % 3 == 2 else "")
            os.makedirs(folder, exist_ok=True)
            _save(picture, os.path.join(folder, f"IMG_{seed:02d}{i:04d}"), kind, heif)
            count += 1
    return count


def main(argv=None):
    """CLI entry point."""
    import argparse

    from nin_keras.cli import OneLineParser, run_cli

    parser = OneLineParser(prog="python -m nin_keras.phone_folder", description=__doc__.splitlines()[0],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--large", action="store_true", help="12 MP JPEGs (half stored turned, EXIF 6)")
    args = parser.parse_args(argv)

    def body():
        from nin_keras.errors import require

        require(args.per_class >= 3, "--per-class must be >= 3.", args.per_class)
        n = write_phone_folder(args.out, args.per_class, args.seed, large=args.large)
        print(f"wrote {n:,} photos in {len(CLASSES)} class folders under {args.out}")

    return run_cli(body)


if __name__ == "__main__":
    import sys

    sys.exit(main())
