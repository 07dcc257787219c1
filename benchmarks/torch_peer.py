"""The PyTorch peer: a nin_keras network rebuilt in PyTorch and trained the same way, for speed comparisons.

Not part of nin_keras and not one of its dependencies: it runs in its own
environment, so the project never installs PyTorch::

    python3 -m venv .venv-torch
    .venv-torch/bin/pip install torch numpy    # or the smaller CPU-only wheel:
    #   .venv-torch/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu && .venv-torch/bin/pip install numpy

``python -m nin_keras.bench --peer ".venv-torch/bin/python benchmarks/torch_peer.py"``
runs it (docs/benchmarks.md). The bench passes the network as the JSON of
``build_nin``'s arguments (``--network FILE``, from the preset or a run's
``config.json``), the batch size, learning rate, precision and number of
steps; this script builds that network (mlpconv blocks of a k x k convolution
then 1 x 1 convolutions, BatchNorm where the spec says, 3 x 3 stride-2
pooling, dropout, the class block and global average pooling), trains it with
Adam and cross-entropy in channels-last memory format on Fashion-MNIST's
training images held in memory as uint8 (random batches, scaled to [0, 1] in
the step, as nin_keras' model does in its graph), and prints one JSON line:
``{"images_per_sec": ..., "seconds": ..., "steps": ..., "precision": ..., "torch": ...}``.

``--precision bfloat16`` trains under ``torch.autocast("cpu", torch.bfloat16)``
(PyTorch's mixed precision: float32 weights, bfloat16 matmuls and convolutions).
"""

import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn


def read_idx_images(data_dir):
    """Fashion-MNIST's training images (N, 28, 28, 1) uint8 and labels, or None when the folder lacks them."""
    for images_name, labels_name in (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),):
        for suffix, opener in ((".gz", gzip.open), ("", open)):
            images_path = os.path.join(data_dir, images_name + suffix)
            labels_path = os.path.join(data_dir, labels_name + suffix)
            if os.path.exists(images_path) and os.path.exists(labels_path):
                with opener(images_path, "rb") as f:
                    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
                with opener(labels_path, "rb") as f:
                    labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
                return images, labels
    return None


def mlpconv(in_channels, widths, kernel_size, *, stride, padding, mlp_kernel, batch_norm, last_relu, momentum):
    """A k x k convolution then 1 x 1 (``mlp_kernel``) convolutions, each with BatchNorm (optional) and ReLU."""
    layers = []
    for i, width in enumerate(widths):
        kernel = kernel_size if i == 0 else mlp_kernel
        pad = (kernel // 2 if (padding if i == 0 else "same") == "same" else 0)
        layers.append(nn.Conv2d(in_channels, width, kernel, stride=stride if i == 0 else 1, padding=pad,
                                bias=not batch_norm))
        if batch_norm:
            # Keras' momentum m keeps m of the old statistic; PyTorch's keeps 1 - m. Keras' epsilon is 1e-3.
            layers.append(nn.BatchNorm2d(width, eps=1e-3, momentum=1 - momentum))
        if i < len(widths) - 1 or last_relu:
            layers.append(nn.ReLU(inplace=True))
        in_channels = width
    return layers, in_channels


def block_widths(spec, mlp_layers, width_multiplier, num_classes=None):
    """The convolution widths of one block spec (``None`` widths mean ``filters``, or the classes in the head)."""
    def scaled(width):
        return max(1, int(round(width * width_multiplier)))

    filters = spec.get("filters")
    mlp = spec.get("mlp_filters")
    if num_classes is not None:  # the class block: not width-scaled, None means num_classes
        mlp = mlp if mlp is not None else [filters] * mlp_layers
        return [num_classes if w is None else w for w in (filters, *mlp)]
    mlp = mlp if mlp is not None else [filters] * mlp_layers
    return [scaled(filters)] + [scaled(filters if w is None else w) for w in mlp]


def build(network):
    """The PyTorch module for nin_keras ``build_nin`` arguments (GAP head only)."""
    if network.get("head", "gap") != "gap":
        raise SystemExit("error: the peer builds NiN's global-average-pooling head only. "
                         f"Received: head={network.get('head')!r}")
    mlp_layers = network.get("mlp_layers", 2)
    common = {"mlp_kernel": network.get("mlp_kernel_size", 1), "momentum": network.get("batch_norm_momentum", 0.99)}
    layers, channels = [], network.get("input_shape", [28, 28, 1])[2]
    blocks = [dict(spec) for spec in network["blocks"]]
    if network.get("dropout") is not None:
        blocks[-1]["dropout"] = network["dropout"]
    for spec in blocks:
        batch_norm = spec.get("batch_norm")
        batch_norm = network.get("batch_norm", False) if batch_norm is None else batch_norm
        convs, channels = mlpconv(channels, block_widths(spec, mlp_layers, network.get("width_multiplier", 1.0)),
                                  spec.get("kernel_size", 3), stride=spec.get("strides", 1),
                                  padding=spec.get("padding", "same"), batch_norm=batch_norm, last_relu=True, **common)
        layers += convs
        pool = spec.get("pool", "max")
        if pool:
            layers.append((nn.MaxPool2d if pool == "max" else nn.AvgPool2d)(3, 2))
        if spec.get("dropout"):
            layers.append(nn.Dropout(spec["dropout"]))
    head = network.get("head_block") or {"filters": None, "kernel_size": 3}
    batch_norm = head.get("batch_norm")
    convs, _ = mlpconv(channels, block_widths(head, mlp_layers, 1.0, network.get("num_classes", 10)),
                       head.get("kernel_size", 3), stride=head.get("strides", 1), padding=head.get("padding", "same"),
                       batch_norm=network.get("batch_norm", False) if batch_norm is None else batch_norm,
                       last_relu=network.get("head_activation", "relu") == "relu", **common)
    return nn.Sequential(*layers, *convs, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def train_step_fn(model, optimizer, precision, image_size):
    """One training step on a uint8 NHWC batch: scale (and resize) in the step, as the Keras model does."""
    loss_fn = nn.CrossEntropyLoss()

    def step(images, labels):
        x = images.permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=torch.channels_last)
        if image_size:
            x = nn.functional.interpolate(x, size=tuple(image_size), mode="bilinear", align_corners=False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            loss = loss_fn(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def main(argv=None):
    """Build the network, train ``--steps`` timed steps after 3 warm-up steps, print the protocol's JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", required=True, help="JSON file: nin_keras build_nin arguments")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=0.004)
    parser.add_argument("--steps", type=int, default=40, help="timed training steps (after 3 warm-up steps)")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist",
                        help="Fashion-MNIST IDX files; random pixels of the network's input shape if absent")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    with open(args.network) as f:
        network = json.load(f)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    shape = network.get("input_shape", [28, 28, 1])
    data = read_idx_images(args.data_dir) if shape == [28, 28, 1] else None
    if data is None:
        rng = np.random.default_rng(1)
        data = (rng.integers(0, 256, (args.batch_size * 20, *shape), dtype=np.uint8),
                rng.integers(0, network.get("num_classes", 10), args.batch_size * 20))
    images, labels = torch.from_numpy(data[0].copy()), torch.from_numpy(data[1].copy())
    model = build(network).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    step = train_step_fn(model, optimizer, args.precision, network.get("image_size"))
    generator = torch.Generator().manual_seed(0)

    def batch():
        index = torch.randint(0, len(images), (args.batch_size,), generator=generator)
        return images[index], labels[index]

    for _ in range(3):  # warm-up: oneDNN primitive creation, allocator
        step(*batch())
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step(*batch())
    loss.item()
    seconds = time.perf_counter() - start
    print(json.dumps({"images_per_sec": args.steps * args.batch_size / seconds, "seconds": seconds,
                      "steps": args.steps, "precision": args.precision, "threads": args.threads,
                      "torch": torch.__version__, "parameters": sum(p.numel() for p in model.parameters())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
