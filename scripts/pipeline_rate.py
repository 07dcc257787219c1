"""Images/s and peak memory of the image-folder pipeline alone (no model): ``python scripts/pipeline_rate.py FOLDER``.

Decodes every file of FOLDER (class sub-folders, any depth) through
``nin_keras.data.folders.image_pipeline`` at SIZE x SIZE RGB, without (evaluation,
calibration) or with (training) photo augmentation, REPEATS times after one
warm-up batch; prints the median and best images/s and the process's peak
RSS. Used for README's figures on 12-megapixel phone photos
(``python -m nin_keras.phone_folder OUT --large``).
"""

import argparse
import os
import resource
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--augment", action="store_true", help="the training pipeline (random crop, flip, jitter)")
    args = parser.parse_args()

    from nin_keras.data import folders

    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(args.folder) for name in names
                   if not name.startswith("."))
    files = folders.ImageFiles(paths, (args.size, args.size), 3)
    ds = folders.image_pipeline(files, np.zeros(len(paths), np.int32), augment=args.augment).batch(8)
    for _ in ds.take(1):  # warm-up: tracing, thread pools
        pass
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        n = sum(int(batch[0].shape[0]) for batch in ds)
        rates.append(n / (time.perf_counter() - start))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'augment' if args.augment else 'plain'}: {n} files, {np.median(rates):.1f} images/s median of "
          f"{args.repeats} (best {max(rates):.1f}), peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
