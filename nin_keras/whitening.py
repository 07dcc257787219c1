"""Patch-whitened stem: the first convolution set from the training images' patches, then frozen.

Why: airbench (Keller Jordan's CIFAR-10 speed runs) starts its network with a
convolution whose filters whiten the image's patches: the eigenvectors of
the patches' covariance, each divided by the square root of its eigenvalue,
and each also negated so the ReLU after it keeps both signs. The layer is
not trained. Every later layer then sees decorrelated, unit-variance inputs
from the first step, which is the point of short runs, and the frozen
layer's weight gradient is not computed.

How, here: the stem (``block1_conv0``) must be a k x k convolution with
at most 2 k² C filters (C input channels), an even number of them. Its
kernel takes the top ``filters / 2`` eigenvectors, then their negatives;
its bias centres the patches (the images arrive in [0, 1], not
mean-subtracted), so each output has mean 0 and variance
``eigenvalue / (eigenvalue + eps)`` over the training patches.
"""

import numpy as np

#: Images whose patches estimate the covariance (a 5x5 patch has 25 dimensions; 2,000 28x28 images give
#: about 1.5 million patches).
DEFAULT_IMAGES = 2000
#: Added to each eigenvalue before the square root, as airbench's 5e-4: keeps the weakest kept components
#: from being amplified into noise.
DEFAULT_EPS = 5e-4


def _patches(images, kernel_size):
    """Every ``kernel_size`` patch of ``images`` (raw pixels) as a row, rescaled to [0, 1], in the kernel's
    (row, column, channel) order."""
    x = np.asarray(images, dtype=np.float64) / 255.0
    windows = np.lib.stride_tricks.sliding_window_view(x, (kernel_size, kernel_size), axis=(1, 2))
    # (N, H', W', C, k, k) -> (N * H' * W', k * k * C)
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, kernel_size * kernel_size * x.shape[-1])


def whitening_filters(images, kernel_size, filters, eps=DEFAULT_EPS, chunk=100):
    """(kernel, bias) of a ``kernel_size`` convolution with ``filters`` outputs that whitens ``images``' patches.

    ``images``: an (N, H, W, C) array of raw [0, 255] pixels, as the model's input takes them; the
    kernel expects them rescaled to [0, 1], as the model's ``Rescaling`` layer does. The kernel has
    Keras' layout (k, k, C, filters). The moments are summed ``chunk`` images at a time: all the
    patches at once would take 230 MB for 2,000 28x28 images and gigabytes for larger colour ones.
    """
    dims = kernel_size * kernel_size * images.shape[-1]
    total, outer, count = np.zeros(dims), np.zeros((dims, dims)), 0
    for start in range(0, len(images), chunk):
        patches = _patches(images[start:start + chunk], kernel_size)
        total += patches.sum(axis=0)
        outer += patches.T @ patches
        count += len(patches)
    mean = total / count
    covariance = outer / count - np.outer(mean, mean)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    half = filters // 2
    top = eigenvectors[:, -half:][:, ::-1] / np.sqrt(np.maximum(eigenvalues[-half:][::-1], 0.0) + eps)
    kernel = np.concatenate([top, -top], axis=1)
    bias = -mean @ kernel
    return (kernel.reshape(kernel_size, kernel_size, images.shape[-1], filters).astype(np.float32),
            bias.astype(np.float32))


def whiten_stem(model, images, eps=DEFAULT_EPS):
    """Set ``model``'s ``block1_conv0`` to whiten ``images``' patches and freeze it; returns the layer.

    Call before compiling. Raises ConfigError when the stem cannot hold the filters.
    """
    from nin_keras.errors import require

    layer = model.get_layer("block1_conv0")
    kernel_size, _ = layer.kernel_size
    channels, filters = layer.kernel.shape[2], layer.filters
    require(layer.kernel_size[0] == layer.kernel_size[1] and layer.use_bias and layer.data_format == "channels_last",
            "--whiten-stem needs a square channels_last stem convolution with a bias (one without BatchNorm).",
            f"{layer.kernel_size} kernel, {layer.data_format}, use_bias={layer.use_bias}")
    require(filters % 2 == 0 and filters <= 2 * kernel_size * kernel_size * channels,
            f"--whiten-stem needs an even number of stem filters, at most 2 x {kernel_size}x{kernel_size}x{channels} "
            f"= {2 * kernel_size * kernel_size * channels} (each eigenvector and its negative).", filters)
    require(tuple(layer.input.shape[1:3]) == tuple(images.shape[1:3]),
            "--whiten-stem needs the stem to see the images at their own size (no image_size resize in the "
            "model).", f"images {tuple(images.shape[1:3])}, stem input {tuple(layer.input.shape[1:3])}")
    kernel, bias = whitening_filters(images, kernel_size, filters, eps)
    layer.set_weights([kernel, bias])
    layer.trainable = False
    return layer
