"""The tf.data pipelines fit, tuning, bench and export share: cache, seeded shuffle, augment, batch, prefetch.

Rescaling and resizing happen inside the model, so for in-memory arrays the
pipeline only shuffles, augments (stateless, seeded per element), batches
and prefetches raw pixels; image folders are decoded in parallel map calls
(:func:`nin_keras.data.folders.image_pipeline`).
"""

from nin_keras.errors import DataError


def _augment(image, label, seed_pair, pad=3):
    """Light augmentation: random horizontal flip and a shift of up to ``pad`` pixels.

    Stateless ops seeded per element (``seed_pair``, from a seeded random
    stream), so a run's augmentation is the same whatever order tf.data's
    parallel map calls run in: the seed reproduces it.
    """
    import tensorflow as tf

    height, width = image.shape[0], image.shape[1]
    flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed_pair, 2))
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if not pad:
        return image, label
    image = tf.image.pad_to_bounding_box(image, pad, pad, height + 2 * pad, width + 2 * pad)
    image = tf.image.stateless_random_crop(image, [height, width, image.shape[-1]], crop_seed)
    return image, label


def make_dataset(x, y, batch_size, *, shuffle=False, seed=0, drop_remainder=False, shard_policy=None, augment=False,
                 cache=True, one_hot_classes=None, augment_shift=3):
    """A tf.data pipeline: cache, seeded shuffle, augment, batch, prefetch.

    ``x`` is an in-memory uint8 array, or :class:`~nin_keras.data.folders.ImageFiles`
    decoded on the fly (photo augmentation: random resized crop, flip, colour
    jitter).

    ``batch_size`` is the **global** batch (per-replica batch x replicas):
    under a distribution strategy ``model.fit`` splits each batch across
    replicas. ``shard_policy`` (a ``tf.data.experimental.AutoShardPolicy``)
    decides how multi-worker training shards the data. ``augment_shift``
    is the largest random shift, in pixels, of in-memory augmentation.
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
        if augment:
            # In the pipeline, not the model: keeps random ops out of exported
            # models and runs on the CPU threads tf.data already uses.
            ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed).batch(2)))
            ds = ds.map(lambda pair, seed_pair: _augment(pair[0], pair[1], seed_pair, augment_shift),
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


def make_train_dataset(x, y, batch_size, *, seed=0, shard_policy=None, augment=False, cache=True, one_hot_classes=None,
                       augment_shift=3):
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
                        one_hot_classes=one_hot_classes, augment_shift=augment_shift), steps
