"""The tf.data pipelines fit, tuning, bench and export share: cache, seeded shuffle, augment, batch, prefetch.

Rescaling and resizing happen inside the model, so for in-memory arrays the
pipeline only shuffles, augments (stateless, seeded per element), batches
and prefetches raw pixels; image folders are decoded in parallel map calls
(:func:`nin_keras.data.folders.image_pipeline`).
"""

from nin_keras.errors import DataError


def _augment(image, label, seed_pair, pad=3, flip_and_shift=True, erasing=0.0):
    """Light augmentation: random horizontal flip and a shift of up to ``pad`` pixels, then random erasing
    with probability ``erasing``.

    Stateless ops seeded per element (``seed_pair``, from a seeded random
    stream), so a run's augmentation is the same whatever order tf.data's
    parallel map calls run in: the seed reproduces it.
    """
    import tensorflow as tf

    if flip_and_shift:
        image = _flip_and_shift(image, seed_pair, pad)
    if erasing:
        # Last, as in the paper (a shift would move the rectangle out of the frame); its seed is folded in,
        # not split three ways, so the flips and shifts stay those of runs made before erasing existed.
        image = erase_rectangle(image, tf.random.experimental.stateless_fold_in(seed_pair, 2), erasing)
    return image, label


def _flip_and_shift(image, seed_pair, pad):
    import tensorflow as tf

    height, width = image.shape[0], image.shape[1]
    flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed_pair, 2))
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if not pad:
        return image
    image = tf.image.pad_to_bounding_box(image, pad, pad, height + 2 * pad, width + 2 * pad)
    return tf.image.stateless_random_crop(image, [height, width, image.shape[-1]], crop_seed)


# Zhong et al., "Random Erasing Data Augmentation" (2017): the rectangle's share of the image and its
# aspect ratio (height / width), their defaults.
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 1 / 0.3)


def erase_rectangle(image, seed, probability):
    """With ``probability``, replace one random rectangle of ``image`` (H, W, C) with random pixels.

    The rectangle covers 2-40% of the image with an aspect ratio from 0.3 to
    3.3 (log-uniform), clipped to the image; its position is uniform. The
    pixels are uniform noise in the image's range (0-255). Stateless: the same
    ``seed`` erases the same rectangle. Keras' ``RandomErasing`` layer draws
    from a stateful generator, which tf.data's parallel map would consume in
    a different order on every run.
    """
    import math

    import tensorflow as tf

    height, width, channels = image.shape
    box_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    apply, area, aspect, top, left = tf.unstack(tf.random.stateless_uniform([5], box_seed))
    area = (ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * area) * (height * width)
    log_low, log_high = math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])
    aspect = tf.exp(log_low + (log_high - log_low) * aspect)
    box_h = tf.clip_by_value(tf.round(tf.sqrt(area * aspect)), 1.0, float(height))
    box_w = tf.clip_by_value(tf.round(tf.sqrt(area / aspect)), 1.0, float(width))
    top = tf.floor(top * (height - box_h + 1))
    left = tf.floor(left * (width - box_w + 1))
    rows = tf.range(height, dtype=tf.float32)[:, None]
    cols = tf.range(width, dtype=tf.float32)[None, :]
    inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w) & (apply < probability)
    noise = tf.random.stateless_uniform([height, width, channels], noise_seed, minval=0, maxval=256, dtype=tf.int32)
    return tf.where(inside[:, :, None], tf.cast(noise, image.dtype), image)


def make_dataset(x, y, batch_size, *, shuffle=False, seed=0, drop_remainder=False, shard_policy=None, augment=False,
                 cache=True, one_hot_classes=None, augment_shift=3, random_erasing=0.0):
    """A tf.data pipeline: cache, seeded shuffle, augment, batch, prefetch.

    ``x`` is an in-memory uint8 array, or :class:`~nin_keras.data.folders.ImageFiles`
    decoded on the fly (photo augmentation: random resized crop, flip, colour
    jitter).

    ``batch_size`` is the **global** batch (per-replica batch x replicas):
    under a distribution strategy ``model.fit`` splits each batch across
    replicas. ``shard_policy`` (a ``tf.data.experimental.AutoShardPolicy``)
    decides how multi-worker training shards the data. ``augment_shift``
    is the largest random shift, in pixels, of in-memory augmentation;
    ``random_erasing`` the probability of erasing a rectangle (in-memory
    data, with or without ``augment``).
    ``one_hot_classes`` turns the integer labels into one-hot vectors of
    that length (what label smoothing's loss takes). ``cache=False`` is for
    the benchmark's comparison only.
    """
    import tensorflow as tf

    from nin_keras.data.folders import ImageFiles, image_pipeline

    if isinstance(x, ImageFiles):
        # Streamed from disk and never cached: memory stays bounded whatever the folder's size.
        ds = image_pipeline(x, y, shuffle=shuffle, seed=seed, augment=augment)
    else:
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if cache:
            ds = ds.cache()
        if shuffle:
            ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        if augment or random_erasing:
            # In the pipeline, not the model: keeps random ops out of exported
            # models and runs on the CPU threads tf.data already uses.
            ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed).batch(2)))
            ds = ds.map(lambda pair, seed_pair: _augment(pair[0], pair[1], seed_pair, augment_shift,
                                                         flip_and_shift=augment, erasing=random_erasing),
                        num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if one_hot_classes:
        ds = ds.map(lambda images, labels: (images, tf.one_hot(labels, one_hot_classes)))
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = in_memory_options() if not isinstance(x, ImageFiles) else tf.data.Options()
    if shard_policy is not None:
        options.experimental_distribute.auto_shard_policy = shard_policy
    return ds.with_options(options)


def in_memory_options():
    """tf.data options for pipelines over arrays in memory: tf.data's autotuner off.

    Why: when an iterator ends (every epoch's end, every validation pass), TensorFlow 2.21's autotuning
    thread is only stopped once its current optimisation period (doubling from 10 ms) has run out, and the
    iterator's owner waits for it. A 13 s epoch measured 20 s (epochs 2 and 3 of ``--limit 25600``), the
    bench's 1.7 s measurements took 2.55 s or 5.1 s. Over arrays in memory there is nothing to tune (the
    pipeline alone is 100x faster than training), so it is off: the same three epochs took 43 s instead of
    62 s, with the same history. Image folders keep it (decoding in parallel is what it tunes).
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def fitting_batch_size(batch_size, examples, replicas=1):
    """``batch_size``, or for fewer training examples than that, the largest ``replicas`` x 2^k that fits.

    A folder of 60 photos leaves 44 for training, fewer than the photo preset's batch of 64: training on
    them beats refusing, and a power of two keeps the batch one the learning rate was chosen near.
    Returns ``batch_size`` unchanged when not even one example per replica is there (the pipeline's
    one-line error says so).
    """
    if examples >= batch_size or examples < replicas:
        return batch_size
    return replicas * (1 << ((examples // replicas).bit_length() - 1))


def make_train_dataset(x, y, batch_size, *, seed=0, shard_policy=None, augment=False, cache=True, one_hot_classes=None,
                       augment_shift=3, random_erasing=0.0):
    """The training pipeline: seeded reshuffle every epoch and only full batches.

    Dropping the last partial batch keeps every replica's share the same
    shape (in-model augmentation layers fail on uneven splits under
    MirroredStrategy); reshuffling means a different remainder is skipped
    each epoch. Returns (dataset, steps per epoch).
    """
    steps = len(x) // batch_size
    if steps == 0:
        raise DataError(f"batch size {batch_size} is larger than the {len(x)} training examples; "
                        f"lower --batch-size or raise --limit")
    return make_dataset(x, y, batch_size, shuffle=True, seed=seed, drop_remainder=True,
                        shard_policy=shard_policy, augment=augment, cache=cache,
                        one_hot_classes=one_hot_classes, augment_shift=augment_shift,
                        random_erasing=random_erasing), steps
