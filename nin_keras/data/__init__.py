"""Data for nin_keras: the sources, split into train / validation / test, and the tf.data pipelines.

* :mod:`nin_keras.data.idx`: Fashion-MNIST's IDX files, found offline and read safely;
* :mod:`nin_keras.data.folders`: image folders: listing, header scan, ``split.json``, decoding;
* :mod:`nin_keras.data.sources`: :func:`load_data` over every source (and tensorflow-datasets);
* :mod:`nin_keras.data.pipeline`: :func:`make_dataset` / :func:`make_train_dataset`
  (:func:`fitting_batch_size` for data smaller than a batch).

The imports go one way (pipeline and sources use folders and idx; nothing
here imports the generated-folder writers or the model). No TensorFlow is
imported until a pipeline is built.
"""

from nin_keras.data.folders import as_array
from nin_keras.data.idx import (DEBIAN_DATA_DIR, ENV_DATA_DIR, FASHION_MNIST_CLASSES, IDX_FILES, IMAGE_MAGIC,
                                LABEL_MAGIC, find_fashion_mnist_dir, load_idx_split, read_idx)
from nin_keras.data.pipeline import fitting_batch_size, make_dataset, make_train_dataset
from nin_keras.data.sources import Splits, load_data, load_tfds

__all__ = ["DEBIAN_DATA_DIR", "ENV_DATA_DIR", "FASHION_MNIST_CLASSES", "IDX_FILES", "IMAGE_MAGIC", "LABEL_MAGIC",
           "Splits", "as_array", "find_fashion_mnist_dir", "fitting_batch_size", "load_data", "load_idx_split",
           "load_tfds", "make_dataset", "make_train_dataset", "read_idx"]
