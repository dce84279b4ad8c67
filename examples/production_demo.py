"""The production half of keras-lossal: export, then triage unlabeled images into a labeling queue.

In production a trained `LossLearningModel` is exported in TF Serving's
layout, and a triage job scores every incoming unlabeled item by its
predicted loss: the items the model expects to get most wrong are the ones
worth a person's time. This script does both steps on held-out images:

1. `export_for_serving` writes `<out>/models/lossal/<version>/` with the
   image preprocessing built into the graph (so raw PNG bytes can be scored);
2. the held-out images are written as PNG files, as they would arrive;
3. `triage` scores them in-process from the SavedModel (no server needed;
   `--server grpc://host:8500` in `lossal triage` does the same through TF
   Serving) and writes the queue (by default the highest predicted loss in
   each of K k-means clusters of the hardest candidates, listed by predicted loss).

`make demo` calls `run_production_demo` after training. Run standalone
(`python examples/production_demo.py`), it trains a small model for a few
seconds on synthetic data first.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_lossal as kl  # noqa: E402
from keras_lossal.export import export_for_serving  # noqa: E402
from keras_lossal.preprocessing import ImagePreprocessing  # noqa: E402
from keras_lossal.serving import InProcessScorer, TriageResult, read_items, triage  # noqa: E402


def run_production_demo(
    model,
    preprocessing: ImagePreprocessing,
    holdout_images_uint8: np.ndarray,
    out_dir: str,
    labels: list[str] | None = None,
    top_k: int = 20,
    show: int = 10,
    num_labeled: int | None = None,
) -> TriageResult:
    """Exports `model`, writes `holdout_images_uint8` as PNGs, triages them, prints the queue head.

    Args:
        model: a trained `LossLearningModel`.
        preprocessing: the `ImagePreprocessing` used in training.
        holdout_images_uint8: raw images `(N, H, W, C)` or `(N, H, W)`, uint8.
        out_dir: receives `models/`, `unlabeled/` and `triage/`.
        labels: class names for the queue (default: class ids).
        top_k: labeling queue length.
        show: queue entries to print.
        num_labeled: the items `model` was trained on, recorded in the export (`training.num_items`), from which
            triage's default selection (`budget_switch`) counts the labels; `None`: not recorded (then badge).

    Example:

    >>> result = run_production_demo(model, prep, x_test[:500], "demo_out/production")  # doctest: +SKIP
    """
    images = np.asarray(holdout_images_uint8)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8:
        raise ValueError(f"Expected uint8 images (raw pixels, before preprocessing). Received dtype {images.dtype}")

    # A new integer version each run: TF Serving picks up the highest one.
    version_dir = export_for_serving(
        model,
        os.path.join(out_dir, "models", "lossal"),
        preprocessing=preprocessing,
        labels=labels,
        training=None if num_labeled is None else {"num_items": int(num_labeled)},
    )
    print(f"exported SavedModel: {version_dir}")

    folder = os.path.join(out_dir, "unlabeled")
    os.makedirs(folder, exist_ok=True)
    for index, image in enumerate(images):
        path = os.path.join(folder, f"{index:06d}.png")
        if not os.path.exists(path):
            tf.io.write_file(path, tf.io.encode_png(image))
    print(f"wrote {len(images)} held-out images to {folder}")

    # restart=True: the queue belongs to this export; a re-run would otherwise resume with the old model's scores.
    result = triage(
        read_items(folder), InProcessScorer(version_dir), os.path.join(out_dir, "triage"), top_k=top_k, restart=True
    )
    print(result.selection_reason or f"selection {result.selection}")
    print(
        f"triage: scored {result.scored} items ({result.items_per_second:.0f} items/s), {result.failed} failed; "
        f"labeling queue of {result.queued} in {result.output_dir}/queue.jsonl (also queue.csv, "
        "label_studio_tasks.json)"
    )
    print(f"{'rank':>4}  {'predicted loss':>14}  {'predicted class':<16} item")
    for record in result.queue[:show]:
        print(f"{record['rank']:>4}  {record['predicted_loss']:>14.4f}  {record.get('label', '-'):<16} {record['id']}")
    return result


def _standalone(out_dir: str) -> None:
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    # Synthetic 3-class data: the class shifts the mean brightness, plus noise so some items are hard.
    labels = rng.integers(0, 3, 600)
    pixels = np.clip(rng.normal(60 + 60 * labels[:, None, None, None], 45, (600, 16, 16, 1)), 0, 255).astype(np.uint8)
    preprocessing = ImagePreprocessing(16, 16, 1, mean=(0.5,), std=(0.25,))
    backbone = kl.backbones.resnet18_cifar((16, 16, 1), num_classes=3, width=8)
    model = kl.LossLearningModel(backbone)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(preprocessing(pixels[:500]).numpy(), labels[:500], batch_size=50, epochs=3, verbose=0)
    run_production_demo(
        model, preprocessing, pixels[500:], out_dir, labels=["dark", "medium", "bright"], num_labeled=500
    )


if __name__ == "__main__":
    _standalone(sys.argv[1] if len(sys.argv) > 1 else "demo_out/production")
