"""What phone apps need from a TFLite classifier: RGB camera input and MediaPipe metadata.

MediaPipe Tasks' ``ImageClassifier`` (the standard Android/iOS/web runtime,
google-ai-edge/mediapipe-samples ``examples/image_classification``) reads
labels and input normalisation from metadata inside the ``.tflite`` file and
needs a 1 x H x W x 3 (RGB) uint8 or float32 input. This module

* wraps a grayscale Keras model with a fixed RGB -> luminance 1 x 1
  convolution (:func:`with_rgb_input`), so camera frames go in unchanged;
* writes the metadata with MediaPipe's own writer (:func:`add_metadata`);
* runs a ``.tflite`` through ``ImageClassifier`` the way an app does
  (:func:`MediaPipeClassifier`).

``mediapipe`` is an optional dependency (``pip install "nin_keras[phone]"``).
"""

import contextlib
import importlib
import sys
import types

import numpy as np

from nin_keras.errors import NinError
from nin_keras.tf_logs import quiet_native_logs

#: ITU-R BT.601 luma weights: what PIL's ``convert("L")`` and most camera
#: pipelines use to turn RGB into gray.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
INSTALL_HINT = 'pip install "nin_keras[phone]" (or: pip install mediapipe)'
#: Every metadata field nin_keras writes (name, description, version, author,
#: licence, image normalisation and colour space, a label file) exists since
#: metadata schema 1.0.0, so that is the minimum parser version.
MIN_PARSER_VERSION = "1.0.0"
_SHIMMED_MEDIAPIPE = ("1.2.",)


def with_rgb_input(model):
    """``model`` (1-channel input) behind a fixed RGB -> luminance convolution; other models unchanged.

    The conversion is a 1 x 1 convolution with weights :data:`LUMA_WEIGHTS`
    and no bias, in the exported graph only: the trained Keras model is not
    modified, and a gray RGB pixel (R = G = B) gives exactly its gray value.
    """
    import keras

    height, width, channels = model.input_shape[1:]
    if channels != 1:
        return model
    inputs = keras.Input((height, width, 3), name="image")
    luma = keras.layers.Conv2D(1, 1, use_bias=False, trainable=False, name="rgb_to_luminance")
    gray = luma(inputs)
    luma.set_weights([np.asarray(LUMA_WEIGHTS, np.float32).reshape(1, 1, 3, 1)])
    return keras.Model(inputs, model(gray), name=f"{model.name}_rgb")


def import_metadata_writers():
    """MediaPipe's metadata writers, with a narrow shim for the module mediapipe 1.2.x's wheel lacks.

    ``metadata.py`` imports ``mediapipe.tasks.cc.metadata.python._pywrap_metadata_version``
    only to compute the minimum parser version; the 1.2.x wheels ship
    without it. For exactly those versions a stand-in module returns
    :data:`MIN_PARSER_VERSION`; any other version is imported as is.
    """
    try:
        import mediapipe
    except ImportError:
        raise NinError(f"metadata for phone apps needs the mediapipe package: {INSTALL_HINT}") from None
    name = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"
    try:
        importlib.import_module(name)
    except ImportError:
        if not mediapipe.__version__.startswith(_SHIMMED_MEDIAPIPE):
            raise NinError(f"mediapipe {mediapipe.__version__}: its metadata writer cannot be imported "
                           f"(no {name}); nin_keras is tested with mediapipe 1.2.x") from None
        shim = types.ModuleType(name)
        shim.GetMinimumMetadataParserVersion = lambda metadata_buffer: MIN_PARSER_VERSION
        parts = name.split(".")
        for i in range(len(parts) - 1, 0, -1):  # parent packages too, empty
            sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        sys.modules[name] = shim
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_info, metadata_writer

    return metadata_writer, metadata_info


def add_metadata(tflite_bytes, labels, name, description, *, version="1", author="nin_keras", licence="Apache-2.0"):
    """Return ``tflite_bytes`` with MediaPipe image-classifier metadata.

    Normalisation is mean 0, std 1 (identity): the model rescales pixels
    itself, so apps feed raw 0-255 values to float models and raw bytes to
    uint8 ones.
    """
    metadata_writer, metadata_info = import_metadata_writers()

    class Writer(metadata_writer.MetadataWriter):
        def __del__(self):
            # The stock __del__ fails when it runs at interpreter exit (`os`
            # already gone); the temporary folder is removed below instead.
            pass

    writer = Writer(bytearray(tflite_bytes))
    try:
        writer.add_general_info(name, description)
        # add_general_info only takes name and description; the schema's
        # version/author/licence fields go through GeneralMd itself.
        writer._general_md = metadata_info.GeneralMd(name=name, version=str(version), description=description,
                                                     author=author, licenses=licence)
        writer.add_image_input([0.0], [1.0])
        writer.add_classification_output(metadata_writer.Labels().add(list(labels)))
        model_with_metadata, _ = writer.populate()
    finally:
        writer._temp_folder.cleanup()
    return bytes(model_with_metadata)


def read_metadata_labels(tflite_path):
    """The label list packed in a ``.tflite`` file's metadata (for checks and tests)."""
    import zipfile

    with zipfile.ZipFile(tflite_path) as archive:  # associated files are a zip appended to the model
        label_files = [n for n in archive.namelist() if n.endswith(".txt")]
        if not label_files:
            return []
        return archive.read(label_files[0]).decode("utf-8").splitlines()


class MediaPipeClassifier:
    """A ``.tflite`` file loaded by MediaPipe Tasks' ``ImageClassifier``, as an app loads it.

    Raises :class:`NinError` with MediaPipe's reason when it refuses the model
    (an int8 input, a 1-channel input, missing metadata).
    """

    def __init__(self, tflite_path, max_results=1):
        import_metadata_writers()  # same optional-dependency error
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core import base_options

        options = vision.ImageClassifierOptions(
            base_options=base_options.BaseOptions(model_asset_path=str(tflite_path)), max_results=max_results)
        try:
            with quiet_native_logs():  # MediaPipe's LiteRT says it created its XNNPACK delegate
                self.classifier = vision.ImageClassifier.create_from_options(options)
        except (RuntimeError, ValueError) as e:
            raise NinError(f"MediaPipe ImageClassifier refuses {tflite_path}: {e}") from None

    def top1(self, rgb_images):
        """Top-1 class index of each uint8 RGB image (N, H, W, 3), any H and W: MediaPipe resizes."""
        import mediapipe as mp

        out = np.empty(len(rgb_images), np.int64)
        for i, image in enumerate(rgb_images):
            frame = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image, np.uint8))
            result = self.classifier.classify(frame)
            out[i] = result.classifications[0].categories[0].index
        return out

    def close(self):
        with contextlib.suppress(Exception):
            self.classifier.close()


def as_camera_frames(images, scale=1):
    """Gray or RGB uint8 images as RGB frames, ``scale`` times larger (what a camera would hand an app).

    Pixels are replicated (nearest neighbour), so MediaPipe's own resize back
    to the model's size recovers the image and any disagreement measured is
    the runtime's, not this function's.
    """
    from PIL import Image

    frames = []
    for image in images:
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert("RGB")
        if scale != 1:
            pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
        frames.append(np.asarray(pil))
    return np.stack(frames)
