"""`LossLearningModel`: a backbone plus a loss-prediction head, trained with `fit`."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_lossal import backbones as backbones_lib
from keras_lossal import data as data_lib
from keras_lossal import losses as losses_lib
from keras_lossal.contracts import DEFAULT_RECIPE
from keras_lossal.head import LossPredictionHead

__all__ = ["LossLearningModel", "HeadSchedule", "RECIPES", "resolve_feature_layers"]

_NON_SPATIAL_TAPS = 3


class JointLoss(NamedTuple):
    """One batch's joint loss, as `LossLearningModel.joint_loss` returns it."""

    total: Any
    task_loss: Any
    prediction_loss: Any
    ranking_accuracy: Any  # per pair; the logged metric is its mean
    batch_size: Any


def _distribution_replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


def _single_output(layer) -> Any:
    try:
        output = layer.output
    except (AttributeError, ValueError):
        return None
    return output if isinstance(output, keras.KerasTensor) else None


def _check_graph_backbone(backbone) -> None:
    if not isinstance(backbone, keras.Model):
        raise TypeError(f"Expected `backbone` to be a keras.Model. Received: {type(backbone).__name__}")
    try:
        backbone.inputs, backbone.outputs  # noqa: B018 - raises for subclassed models
        graph = bool(backbone.inputs) and bool(backbone.outputs)
    except (AttributeError, ValueError):
        graph = False
    if not graph:
        raise ValueError(
            f"LossLearningModel taps intermediate outputs, so the backbone must be a functional "
            f"or Sequential model with a known input. Received {type(backbone).__name__} "
            f"'{backbone.name}', whose layers' outputs are not part of a graph. Fix: build it "
            "with the functional API (inputs = keras.Input(shape); x = layer(inputs); ...; "
            "keras.Model(inputs, outputs)), or give a Sequential model a keras.Input first."
        )


def _output_structure(backbone: keras.Model):
    """The backbone's symbolic output (tensor, list or dict) and one name per flattened output."""
    outputs = backbone.outputs
    if isinstance(backbone, keras.Sequential):
        return outputs[0], [backbone.layers[-1].name]
    structure = backbone.output
    if isinstance(structure, dict):
        return structure, sorted(structure)  # keras.tree.flatten orders dict outputs by key
    return structure, list(backbone.output_names)


def resolve_feature_layers(backbone: keras.Model, feature_layers: Sequence[str] | None = None) -> list[str]:
    """Names of the backbone layers whose outputs feed the loss-prediction head.

    With `feature_layers=None`: for a spatial backbone, the last layer of each
    spatial-resolution stage (padding-only stages and the model's own outputs
    excluded); otherwise the last few hidden layers with weights.

    Args:
        backbone: a functional or Sequential Keras model.
        feature_layers: explicit layer names, or `None` for automatic taps.

    Example:

    >>> from keras_lossal.backbones import resnet18_cifar
    >>> resolve_feature_layers(resnet18_cifar(width=8))
    ['stage1', 'stage2', 'stage3', 'stage4']
    """
    _check_graph_backbone(backbone)
    names = [layer.name for layer in backbone.layers]
    if feature_layers is not None:
        if isinstance(feature_layers, str) or not len(feature_layers):
            raise ValueError(
                "Expected `feature_layers` to be None or a non-empty list of layer names. "
                f"Received: feature_layers={feature_layers!r}"
            )
        missing = [name for name in feature_layers if name not in names]
        if missing:
            raise ValueError(
                f"Expected `feature_layers` to name layers of backbone '{backbone.name}'. "
                f"Received: feature_layers={list(feature_layers)}; not found: {missing}; "
                f"available: {names}"
            )
        for name in feature_layers:
            if _single_output(backbone.get_layer(name)) is None:
                raise ValueError(
                    f"Layer '{name}' of backbone '{backbone.name}' has no single output tensor "
                    "to tap; choose another layer."
                )
        return list(feature_layers)
    return _automatic_taps(backbone)


def _automatic_taps(backbone: keras.Model) -> list[str]:
    output_ids = {id(tensor) for tensor in backbone.outputs}
    # Input-side preprocessing (rescaling, normalisation, padding) is not a feature stage.
    first_trainable = next((i for i, layer in enumerate(backbone.layers) if layer.trainable_weights), 0)
    candidates = []
    for layer in backbone.layers[first_trainable:]:
        output = _single_output(layer)
        if isinstance(layer, keras.layers.InputLayer) or output is None or id(output) in output_ids:
            continue
        candidates.append((layer, output))
    # 1x1 maps inside a network are side branches (squeeze-excitation), not stages.
    spatial = [
        (layer, out) for layer, out in candidates if len(out.shape) >= 3 and any(d != 1 for d in out.shape[1:-1])
    ]
    if spatial:
        taps: dict[tuple, str] = {}
        runs: list[tuple[tuple, list]] = []
        for layer, out in spatial:
            resolution = tuple(out.shape[1:-1])
            if runs and runs[-1][0] == resolution:
                runs[-1][1].append(layer)
            else:
                runs.append((resolution, [layer]))
        for resolution, run in runs:
            if all("padding" in type(layer).__name__.lower() for layer in run):
                continue
            taps.pop(resolution, None)  # a later run at the same resolution replaces it, ordered last
            taps[resolution] = run[-1].name
        ordered = sorted(taps.items(), key=lambda item: [layer.name for layer in backbone.layers].index(item[1]))
        return [name for _, name in ordered]
    hidden = [layer.name for layer, out in candidates if len(out.shape) == 2 and layer.weights]
    if not hidden:
        raise ValueError(
            f"Could not find hidden layers to tap in backbone '{backbone.name}'. Pass "
            f"`feature_layers=[...]` explicitly; available: {[layer.name for layer in backbone.layers]}"
        )
    return hidden[-_NON_SPATIAL_TAPS:]


def _warn_about_unsafe_convolutions(backbone: keras.Model) -> None:
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").lower() in ("0", "false"):
        return
    unsafe = backbones_lib.unsafe_strided_1x1(backbone)
    if unsafe:
        warnings.warn(
            f"Backbone '{backbone.name}' has 1x1 convolutions with stride > 1 and fewer than 16 input channels: "
            f"{unsafe}. Training it on a CPU with oneDNN (TensorFlow's default on x86) can crash the process when "
            "the batch does not divide evenly among the threads. Rebuild each as MaxPooling2D(pool_size=1, "
            "strides=s) + a unit-stride 1x1 Conv2D (see keras_lossal.backbones.unsafe_strided_1x1), or set "
            "TF_ENABLE_ONEDNN_OPTS=0 before importing TensorFlow.",
            RuntimeWarning,
            stacklevel=3,
        )


class HeadSchedule(keras.callbacks.Callback):
    """Sets a `LossLearningModel`'s per-epoch head schedule at the start of every epoch.

    Two schedules, both optional: the head-detach gate (from `detach_after_epoch`,
    or from `detach_after_fraction` of the epochs `fit` was asked for), and the
    linear warm-up of lambda over the first `loss_weight_warmup_epochs` epochs.
    `LossLearningModel.fit` adds it itself when the model has a schedule.

    Args:
        detach_after_epoch: 0-based epoch from which the head is detached, or `None`.
        detach_after_fraction: detach from epoch `round(fraction * epochs)`, or `None`.
        loss_weight_warmup_epochs: lambda grows as `(epoch + 1) / warmup` up to 1.
    """

    def __init__(
        self,
        detach_after_epoch: int | None = None,
        detach_after_fraction: float | None = None,
        loss_weight_warmup_epochs: int = 0,
    ):
        super().__init__()
        self.detach_after_epoch = detach_after_epoch
        self.detach_after_fraction = detach_after_fraction
        self.loss_weight_warmup_epochs = int(loss_weight_warmup_epochs)

    def detach_epoch(self) -> int | None:
        if self.detach_after_epoch is not None:
            return self.detach_after_epoch
        if self.detach_after_fraction is not None:
            return int(round(self.detach_after_fraction * int((self.params or {}).get("epochs") or 0)))
        return None

    def on_epoch_begin(self, epoch, logs=None):
        start = self.detach_epoch()
        self.model.head_detached.assign(1.0 if start is not None and epoch >= start else 0.0)
        warmup = self.loss_weight_warmup_epochs
        self.model.loss_weight_scale.assign(1.0 if warmup <= 0 else min(1.0, (epoch + 1) / warmup))


# Yoo & Kweon 2019 and their reference code: joint training, detach after 60 % of training.
_PAPER_RECIPE = {
    "loss_weight": 1.0,
    "margin": 1.0,
    "pairs": "disjoint",
    "backbone_gradient_scale": 1.0,
    "detach_after_fraction": 0.6,
    "loss_weight_warmup_epochs": 0,
    "normalize_head_inputs": False,
}
# What each recipe sets; explicit constructor arguments override it.
RECIPES = {
    "paper": _PAPER_RECIPE,
    # The paper's recipe with a tenth of the ranking gradient reaching the backbone: in
    # benchmarks/head_ablation.py (validation split) the only joint recipe that lifted first-cycle accuracy
    # on 5 of 5 seeds. Its effect on the backbone depends on data and schedule; measure it with a
    # `random@light_joint` control before relying on it.
    "light_joint": {**_PAPER_RECIPE, "backbone_gradient_scale": 0.1},
    # Chosen in benchmarks/head_ablation.py on a validation split: the backbone trains exactly as it
    # would without the head (no harm by construction), and all-pairs ranking ranks best among such recipes.
    "recommended": {
        "loss_weight": 1.0,
        "margin": 1.0,
        "pairs": "all",
        "backbone_gradient_scale": 0.0,
        "detach_after_fraction": None,
        "loss_weight_warmup_epochs": 0,
        "normalize_head_inputs": False,
    },
}


@keras.saving.register_keras_serializable(package="keras_lossal")
class LossLearningModel(keras.Model):
    """A backbone with a loss-prediction head, trained jointly by `fit`.

    The joint objective is `task_loss + loss_weight * loss_prediction_loss`,
    where the task loss is whatever `compile(loss=...)` received, evaluated
    per sample, and the loss-prediction loss is the paper's pairwise margin
    ranking loss against those per-sample losses (held constant).

    `fit` logs `loss`, `task_loss`, `loss_prediction_loss`, `ranking_accuracy`
    (fraction of pairs ordered correctly) and the compiled metrics, which see
    the backbone output only. `predict` returns
    `{"output": backbone output, "predicted_loss": (N,)}`.

    Every training option defaults to the chosen `recipe`: `"recommended"`
    (the default; the backbone trains exactly as it would alone and the head
    learns on its detached features with all-pairs ranking, see
    `benchmarks/head_ablation.py`), `"paper"` (joint training
    with the paper's B/2 disjoint pairs, detached after 60 % of each `fit`'s
    epochs) or `"light_joint"` (the paper's, with a tenth of the ranking
    gradient reaching the backbone). Arguments given explicitly override the recipe.

    Args:
        backbone: a functional or Sequential `keras.Model` (the target network).
        feature_layers: names of the backbone layers to tap, or `None` for the
            last layer of each spatial stage (last hidden layers otherwise).
        head: a layer mapping the list of tapped features to `(batch,)`
            predicted losses; `None` gives `LossPredictionHead(units=128)`
            (normalising its inputs when `normalize_head_inputs`).
        loss_weight: lambda, the weight of the loss-prediction loss.
        margin: xi, the ranking margin.
        detach_after_epoch: from this (0-based) epoch of every `fit` on, no
            gradient flows from the head into the backbone; the head keeps learning.
        detach_after_fraction: the same, as a fraction of each `fit`'s epochs
            (the paper: 120 of 200 = 0.6; 1.0 never detaches). Not together
            with `detach_after_epoch`.
        backbone_gradient_scale: factor on the ranking gradient that reaches
            the backbone before detaching: 1 is the paper's joint training,
            0 detaches from the start (the head never changes the backbone).
        loss_weight_warmup_epochs: lambda grows linearly over this many epochs
            of every `fit` (0: no warm-up).
        pairs: `"disjoint"` (the paper's B/2 pairs) or `"all"` (all B(B-1)/2).
        normalize_head_inputs: give the default head `normalize=True`.
        objective: `"ranking"` (the paper) or `"mse"` (the ablation).
        recipe: a name in `keras_lossal.contracts.RECIPE_NAMES`; see above.
        **kwargs: standard `keras.Model` arguments such as `name`.

    Example:

    >>> import numpy as np, keras
    >>> from keras_lossal.backbones import resnet18_cifar
    >>> model = LossLearningModel(resnet18_cifar(input_shape=(8, 8, 1), width=4))
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> model.predict(np.zeros((2, 8, 8, 1)), verbose=0)["predicted_loss"].shape
    (2,)
    """

    def __init__(
        self,
        backbone: keras.Model,
        feature_layers: Sequence[str] | None = None,
        head: keras.layers.Layer | None = None,
        loss_weight: float | None = None,
        margin: float | None = None,
        detach_after_epoch: int | None = None,
        objective: str = "ranking",
        detach_after_fraction: float | None = None,
        backbone_gradient_scale: float | None = None,
        loss_weight_warmup_epochs: int | None = None,
        pairs: str | None = None,
        normalize_head_inputs: bool | None = None,
        recipe: str = DEFAULT_RECIPE,
        **kwargs,
    ):
        super().__init__(**kwargs)
        given = {
            "loss_weight": loss_weight,
            "margin": margin,
            "pairs": pairs,
            "backbone_gradient_scale": backbone_gradient_scale,
            "detach_after_fraction": detach_after_fraction,
            "loss_weight_warmup_epochs": loss_weight_warmup_epochs,
            "normalize_head_inputs": normalize_head_inputs,
        }
        options = _recipe_options(recipe, objective, detach_after_epoch, given)
        self.recipe = recipe
        self.backbone = backbone
        self.feature_layers = resolve_feature_layers(backbone, feature_layers)
        self.normalize_head_inputs = bool(options["normalize_head_inputs"])
        self.head = (
            head
            if head is not None
            else LossPredictionHead(units=128, normalize=self.normalize_head_inputs, name="loss_prediction_head")
        )
        self.loss_weight = float(options["loss_weight"])
        self.margin = float(options["margin"])
        self.pairs = options["pairs"]
        self.backbone_gradient_scale = float(options["backbone_gradient_scale"])
        self.detach_after_epoch = None if detach_after_epoch is None else int(detach_after_epoch)
        fraction = options["detach_after_fraction"]
        self.detach_after_fraction = None if fraction is None else float(fraction)
        self.loss_weight_warmup_epochs = int(options["loss_weight_warmup_epochs"])
        self.objective = objective

        _warn_about_unsafe_convolutions(backbone)
        self._connect_head()
        # Variables, not Python flags, so the compiled step sees schedule changes without retracing.
        self.head_detached = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="head_detached", dtype="float32"
        )
        self.loss_weight_scale = self.add_weight(
            shape=(), initializer="ones", trainable=False, name="loss_weight_scale", dtype="float32"
        )
        self.task_loss_tracker = keras.metrics.Mean(name="task_loss")
        self.loss_prediction_tracker = keras.metrics.Mean(name="loss_prediction_loss")
        self.ranking_accuracy_tracker = keras.metrics.Mean(name="ranking_accuracy")
        self._task_loss: losses_lib.TaskLoss | None = None
        self.built = True

    def _connect_head(self) -> None:
        """Builds the tapped view of the backbone (output + feature maps) and the head on its taps."""
        backbone = self.backbone
        taps = [backbone.get_layer(name).output for name in self.feature_layers]
        output_structure, self.output_names = _output_structure(backbone)
        # Not tracked as a layer: it shares every weight with `backbone` and is rebuilt from config.
        object.__setattr__(
            self, "_tapped", keras.Model(backbone.inputs, [output_structure, taps], name=f"{backbone.name}_tapped")
        )
        self.head(taps)

    # ----------------------------------------------------------------- forward
    def call(self, inputs, training=None):
        output, features = self._tapped(inputs, training=training)
        head_features = features
        if training and self.backbone_gradient_scale == 0.0:
            head_features = [ops.stop_gradient(feature) for feature in features]
        elif training:  # the gate only matters for gradients; inference skips its elementwise work
            head_features = []
            for feature in features:
                frozen = ops.stop_gradient(feature)
                keep = ops.cast((1.0 - self.head_detached) * self.backbone_gradient_scale, feature.dtype)
                head_features.append(frozen + (feature - frozen) * keep)
        predicted_loss = ops.cast(self.head(head_features, training=training), "float32")
        output = keras.tree.map_structure(_to_float32, output)
        return {"output": output, "predicted_loss": predicted_loss}

    def predict_loss(self, x, batch_size: int | None = None, verbose: Any = 0, **kwargs):
        """Predicted losses for `x` as a NumPy array of shape `(N,)`."""
        return self.predict(x, batch_size=batch_size, verbose=verbose, **kwargs)["predicted_loss"]

    # ----------------------------------------------------------------- compile
    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None, **kwargs):
        """Configures training; `loss` is the task loss, evaluated per sample.

        Accepts the arguments of `keras.Model.compile`. `loss` may be any Keras
        loss or callable, one per output (list or dict by backbone output name)
        for multi-output backbones, weighted by `loss_weights`.
        """
        self._task_loss = losses_lib.TaskLoss(loss, loss_weights, self.output_names)
        self._task_loss_config = {"loss": loss, "loss_weights": loss_weights}
        # `compute_loss` computes the joint loss, so Keras gets no loss of its own to build.
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is not None and self._task_loss is not None:
            config.update(keras.saving.serialize_keras_object(self._task_loss_config))
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)

    def head_schedule(self) -> HeadSchedule | None:
        """The callback that applies this model's detach and warm-up schedule, or `None` without one."""
        if (
            self.detach_after_epoch is None
            and self.detach_after_fraction is None
            and not self.loss_weight_warmup_epochs
        ):
            return None
        return HeadSchedule(self.detach_after_epoch, self.detach_after_fraction, self.loss_weight_warmup_epochs)

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=1,
        verbose="auto",
        callbacks=None,
        validation_split=0.0,
        validation_data=None,
        shuffle=True,
        class_weight=None,
        sample_weight=None,
        **kwargs,
    ):
        """`keras.Model.fit`, plus the head schedule (detach, lambda warm-up) when one is set.

        Two guards on top of Keras: NumPy training data whose last batch would
        hold a single item is batched so that item joins the batch before it
        (a batch of one has no ranking pair and can crash oneDNN's conv
        backprop on CPU), and a batch with NaN/inf inputs or targets stops
        training with a `ValueError` instead of silently producing NaN weights.
        """
        callbacks = list(callbacks or [])
        schedule = self.head_schedule()
        if schedule is None:
            self.head_detached.assign(0.0)
            self.loss_weight_scale.assign(1.0)
        else:
            callbacks.append(schedule)
        self._check_sparse_labels(y)
        if _is_array(x) and not (validation_split and validation_data is None):
            x, y, sample_weight, batch_size = _singleton_free(x, y, sample_weight, batch_size, shuffle)
            shuffle = shuffle and _is_array(x)  # a Dataset made here is already shuffled
        try:
            return super().fit(
                x,
                y,
                batch_size=batch_size,
                epochs=epochs,
                verbose=verbose,
                callbacks=callbacks,
                validation_split=validation_split,
                validation_data=validation_data,
                shuffle=shuffle,
                class_weight=class_weight,
                sample_weight=sample_weight,
                **kwargs,
            )
        except tf.errors.InvalidArgumentError as error:
            label = _OUT_OF_RANGE_LABEL.search(str(error))
            if label is not None:  # a tf.data pipeline: found by the loss, in the batch that held it
                raise ValueError(
                    f"Expected class labels in [0, {label[2]}). Received: a label {label[1]} in a training batch; "
                    "training stopped at that batch."
                ) from None
            if _NON_FINITE_MARKER not in str(error):
                raise
            raise ValueError(
                "Expected finite training data. Received: a batch whose inputs or targets contain NaN/inf "
                "values; training stopped before they reached the weights. Find them with "
                "`~np.isfinite(x).reshape(len(x), -1).all(axis=1)` and drop or repair them."
            ) from None

    def _check_sparse_labels(self, y) -> None:
        """Integer labels for a sparse categorical loss must index the logits: checked before any weight changes."""
        loss = (getattr(self, "_task_loss_config", None) or {}).get("loss")
        loss_name = loss if isinstance(loss, str) else type(loss).__name__
        if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu" or "sparse_categorical" not in _snake(loss_name):
            return
        num_classes = self.backbone.outputs[0].shape[-1] if len(self.backbone.outputs) == 1 else None
        if num_classes is None or not y.size:
            return
        outside = (y < 0) | (y >= num_classes)
        if outside.any():
            bad = np.unique(y[outside])
            raise ValueError(
                f"Expected class labels in [0, {num_classes}) for a model with {num_classes} outputs. Received: "
                f"{int(outside.sum())} label(s) outside it, values {bad[:10].tolist()} (first at position "
                f"{int(np.flatnonzero(outside.reshape(len(y), -1).any(axis=1))[0])})."
            )

    # ------------------------------------------------------------------- steps
    def _flat_targets(self, y) -> list:
        names = self.output_names
        if isinstance(y, dict):
            return [y.get(name) for name in names]
        if isinstance(y, (list, tuple)) and len(names) > 1:
            return list(y)
        return [y]

    def _flat_sample_weights(self, sample_weight) -> list | None:
        """One sample weight per output: a structure like the outputs, or one weight for all of them."""
        if sample_weight is None:
            return None
        if isinstance(sample_weight, dict):
            return [sample_weight.get(name) for name in self.output_names]
        if isinstance(sample_weight, (list, tuple)) and len(self.output_names) > 1:
            return list(sample_weight)
        return [sample_weight] * len(self.output_names)

    def joint_loss(self, y, predictions, sample_weight=None) -> JointLoss:
        """The task loss, the loss-prediction loss and their weighted sum for one batch.

        Args:
            y: the task targets (a structure like the backbone's outputs).
            predictions: this model's outputs on the batch, `{"output", "predicted_loss"}`.
            sample_weight: optional task sample weights (the ranking target stays unweighted).
        """
        if self._task_loss is None:
            raise RuntimeError("LossLearningModel must be compiled with a task `loss` before training.")
        flat_outputs = keras.tree.flatten(predictions["output"])
        per_sample, weighted = self._task_loss(
            self._flat_targets(y), flat_outputs, self._flat_sample_weights(sample_weight)
        )
        batch_size = ops.cast(ops.shape(per_sample)[0], "float32")
        task_loss = ops.divide_no_nan(ops.sum(weighted), batch_size)
        target = ops.stop_gradient(per_sample)
        if self.objective == "ranking":
            prediction_loss = losses_lib.loss_prediction_loss(
                predictions["predicted_loss"], target, self.margin, self.pairs
            )
        else:
            prediction_loss = losses_lib.loss_prediction_mse(predictions["predicted_loss"], target)
        total = task_loss + self.loss_weight * self.loss_weight_scale * prediction_loss
        if self.losses:
            total = total + ops.cast(ops.sum([ops.sum(item) for item in self.losses]), "float32")
        accuracy = losses_lib.ranking_accuracy(predictions["predicted_loss"], target)
        return JointLoss(total, task_loss, prediction_loss, accuracy, batch_size)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras' loss hook: the joint loss, tracked term by term, scaled for the replicas in sync."""
        joint = self.joint_loss(y, y_pred, sample_weight)
        self.task_loss_tracker.update_state(joint.task_loss, sample_weight=joint.batch_size)
        self.loss_prediction_tracker.update_state(joint.prediction_loss, sample_weight=joint.batch_size)
        self.ranking_accuracy_tracker.update_state(joint.ranking_accuracy)
        # Gradients are summed over replicas, so each replica contributes its share.
        return joint.total / _distribution_replicas()

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        # Checked before the forward pass, so NaN/inf reaches neither the weights nor BatchNorm statistics.
        return _reducible_logs(super().train_step((_after_finite_check(x, y), y, sample_weight)))

    def test_step(self, data):
        return _reducible_logs(super().test_step(data))

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # A private Keras hook, overridden because Keras (3.15.1) builds from the mean over replicas of the first
        # distributed batch, one `strategy.reduce` of the whole (x, y) structure: MultiWorkerMirroredStrategy refuses
        # it ("Attempt to convert a value (PerReplica...)", keras-team/keras#20585), and MirroredStrategy fails when
        # the batch does not split evenly (3 validation items over 2 replicas: "Inputs to operation AddN must have
        # the same size and shape"). Building needs only shapes and dtypes, which one replica's part of it has.
        if iterator is not None and self.distribute_strategy.num_replicas_in_sync > 1:
            for _, _, batches in iterator:
                data_batch = keras.tree.map_structure(self._local_part, next(batches))
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _local_part(self, value):
        if isinstance(value, tf.distribute.DistributedValues):
            return self.distribute_strategy.experimental_local_results(value)[0]
        return value

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y_pred, dict) and set(y_pred) == {"output", "predicted_loss"}:
            y_pred = y_pred["output"]
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    # --------------------------------------------------------------- serialise
    def get_config(self):
        return {
            "name": self.name,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "feature_layers": list(self.feature_layers),
            "head": keras.saving.serialize_keras_object(self.head),
            "loss_weight": self.loss_weight,
            "margin": self.margin,
            "detach_after_epoch": self.detach_after_epoch,
            "objective": self.objective,
            "detach_after_fraction": self.detach_after_fraction,
            "backbone_gradient_scale": self.backbone_gradient_scale,
            "loss_weight_warmup_epochs": self.loss_weight_warmup_epochs,
            "pairs": self.pairs,
            "normalize_head_inputs": self.normalize_head_inputs,
            "recipe": self.recipe,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"], custom_objects=custom_objects)
        config["head"] = keras.saving.deserialize_keras_object(config["head"], custom_objects=custom_objects)
        return cls(**config)


def _recipe_options(recipe: str, objective: str, detach_after_epoch, given: dict) -> dict:
    """The recipe's head options, overridden by every option given explicitly, validated."""
    if recipe not in RECIPES:
        raise ValueError(f"Expected recipe in {sorted(RECIPES)}. Received: recipe={recipe!r}")
    options = dict(RECIPES[recipe])
    if detach_after_epoch is not None:
        options["detach_after_fraction"] = None  # an explicit epoch replaces the recipe's fraction
    options.update({key: value for key, value in given.items() if value is not None})
    _check_options(objective, detach_after_epoch, options)
    return options


def _check_options(objective: str, detach_after_epoch, options: dict) -> None:
    if objective not in losses_lib.OBJECTIVES:
        raise ValueError(f"Expected objective in {losses_lib.OBJECTIVES}. Received: objective={objective!r}")
    if options["pairs"] not in losses_lib.PAIRINGS:
        raise ValueError(f"Expected pairs in {losses_lib.PAIRINGS}. Received: pairs={options['pairs']!r}")
    if float(options["loss_weight"]) < 0:
        raise ValueError(f"Expected loss_weight >= 0. Received: loss_weight={options['loss_weight']}")
    if not 0.0 <= float(options["backbone_gradient_scale"]) <= 1.0:
        raise ValueError(
            "Expected backbone_gradient_scale in [0, 1]. "
            f"Received: backbone_gradient_scale={options['backbone_gradient_scale']}"
        )
    if detach_after_epoch is not None and int(detach_after_epoch) < 0:
        raise ValueError(f"Expected detach_after_epoch >= 0 or None. Received: {detach_after_epoch}")
    fraction = options["detach_after_fraction"]
    if fraction is not None:
        if detach_after_epoch is not None:
            raise ValueError(
                "Expected at most one of detach_after_epoch and detach_after_fraction. "
                f"Received: detach_after_epoch={detach_after_epoch}, detach_after_fraction={fraction}"
            )
        if not 0.0 <= float(fraction) <= 1.0:
            raise ValueError(f"Expected detach_after_fraction in [0, 1]. Received: detach_after_fraction={fraction}")
    warmup = options["loss_weight_warmup_epochs"]
    if int(warmup) != warmup or warmup < 0:
        raise ValueError(f"Expected loss_weight_warmup_epochs >= 0. Received: loss_weight_warmup_epochs={warmup}")


def _on_several_workers(strategy) -> bool:
    """Whether `strategy` is a MultiWorkerMirroredStrategy whose replicas span more than this worker."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.num_replicas_in_sync > len(
        strategy.extended.worker_devices
    )


def _reducible_logs(logs):
    """A step's logs, scalars as shape `(1,)` when training on several workers.

    There Keras (3.15.1) averages each log over the replicas with
    `strategy.reduce("MEAN", value, axis=0)`, an axis a scalar lacks; a `(1,)`
    value gives the scalar mean over the replicas, as one worker's replicas get.
    """
    if not _on_several_workers(tf.distribute.get_strategy()):
        return logs
    return keras.tree.map_structure(lambda value: ops.reshape(value, (1,)) if len(value.shape) == 0 else value, logs)


_NON_FINITE_MARKER = "keras_lossal: non-finite training data"
_OUT_OF_RANGE_LABEL = re.compile(r"Received a label value of (-?\d+) which is outside the valid range of \[0, (\d+)\)")


def _after_finite_check(x, y):
    """`x`, available only once every float tensor of `x` and `y` is checked finite (nothing runs before)."""
    checks = [
        tf.debugging.assert_all_finite(tensor, _NON_FINITE_MARKER)
        for tensor in keras.tree.flatten((x, y))
        if tensor is not None and keras.backend.is_float_dtype(tensor.dtype)
    ]
    with tf.control_dependencies(checks):
        return keras.tree.map_structure(tf.identity, x)


def _is_array(x) -> bool:
    return isinstance(x, np.ndarray) and x.ndim >= 1


def _singleton_free(x, y, sample_weight, batch_size, shuffle):
    """NumPy `(x, y, sample_weight)` as a Dataset without a one-item batch, when one would occur."""
    batch_size = 32 if batch_size is None else int(batch_size)
    if len(x) <= 1 or len(x) % batch_size != 1:
        return x, y, sample_weight, batch_size
    arrays = tuple(item for item in (x, y, sample_weight) if item is not None)
    dataset = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle:
        dataset = dataset.shuffle(len(x), reshuffle_each_iteration=True)
    dataset = data_lib.batch_without_singletons(dataset, len(x), batch_size).prefetch(tf.data.AUTOTUNE)
    return dataset, None, None, None


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _to_float32(tensor):
    if tensor is not None and keras.backend.is_float_dtype(tensor.dtype) and tensor.dtype != "float32":
        return ops.cast(tensor, "float32")
    return tensor
