"""``python -m nin_keras.images OUT``: a generated stand-in for a user's photo folder.

Fashion-MNIST test images, tinted and upscaled to mixed sizes and aspect
ratios, saved as JPEG and PNG in class folders: what the tests and the
benchmark use, since no colour photo dataset is available offline. (The
image-folder code itself is :mod:`nin_keras.data.folders`;
:mod:`nin_keras.phone_folder` writes folders with phones' quirks.)
"""

import os

import numpy as np

# ------------------------------------------------------- a generated folder


# One tint per class, so colour carries part of the signal (RGB models must use it).
_TINTS = [(255, 80, 80), (80, 255, 80), (80, 80, 255), (255, 255, 80), (255, 80, 255),
          (80, 255, 255), (255, 160, 60), (160, 60, 255), (60, 160, 255), (200, 200, 200)]


def write_tinted_folder(root, per_class=20, classes=10, *, seed=0, data_dir=None, sizes=((40, 40), (64, 48), (36, 72)),
                        tint="class"):
    """Write Fashion-MNIST images as colour "photos" into ``root/<class>/``: a stand-in for a user's folder.

    Each image is tinted (``tint="class"``: its class's colour, so colour
    alone gives the class away, which makes a quick, easy task; ``"random"``:
    a colour drawn per image, so only the shapes tell classes apart),
    upscaled to one of ``sizes`` (mixed aspect ratios) and saved as JPEG or
    PNG in turn. No real colour photo dataset is available offline; the
    tests and the benchmark use this. Returns the class names.
    """
    from PIL import Image

    from nin_keras.data.idx import FASHION_MNIST_CLASSES, find_fashion_mnist_dir, load_idx_split

    x, y = load_idx_split(find_fashion_mnist_dir(data_dir), "test")
    rng = np.random.default_rng(seed)
    names = [n.replace("/", "-").replace(" ", "-").lower() for n in FASHION_MNIST_CLASSES[:classes]]
    for label, name in enumerate(names):
        folder = os.path.join(root, name)
        os.makedirs(folder, exist_ok=True)
        picks = rng.choice(np.flatnonzero(y == label), per_class, replace=per_class > np.sum(y == label))
        for i, index in enumerate(picks):
            grey = x[index, :, :, 0].astype(np.float32) / 255
            colour = _TINTS[label] if tint == "class" else _TINTS[rng.integers(len(_TINTS))]
            rgb = (grey[..., None] * np.asarray(colour, np.float32)).astype(np.uint8)
            width, height = sizes[i % len(sizes)]
            image = Image.fromarray(rgb).resize((width, height), Image.BILINEAR)
            if i % 2:
                image.save(os.path.join(folder, f"{i:05d}.png"))
            else:
                image.save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)
    return names


def main(argv=None):
    """``python -m nin_keras.images OUT [--per-class N] [--classes K]``: write a tinted "photo" folder."""
    import argparse

    from nin_keras.cli import OneLineParser, run_cli

    parser = OneLineParser(prog="python -m nin_keras.images",
                           description="Write Fashion-MNIST images as tinted colour JPEG/PNG files of mixed sizes "
                                       "into OUT/<class>/ (test data and benchmark input).",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tint", choices=("class", "random"), default="class",
                        help="class: one colour per class (colour gives the class away); random: per image")
    args = parser.parse_args(argv)

    def body():
        from nin_keras.errors import require

        require(args.per_class >= 3, "--per-class must be >= 3.", args.per_class)
        require(2 <= args.classes <= 10, "--classes must be 2..10.", args.classes)
        names = write_tinted_folder(args.out, args.per_class, args.classes, seed=args.seed, tint=args.tint)
        print(f"wrote {args.per_class * len(names):,} images in {len(names)} class folders under {args.out}")

    return run_cli(body)


if __name__ == "__main__":
    import sys

    sys.exit(main())
