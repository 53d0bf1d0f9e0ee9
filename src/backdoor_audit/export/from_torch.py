"""Export a trained PyTorch classifier to ONNX with our metadata, checked and written atomically.

BatchNorm in eval mode (measured with torch 2.13, onnxscript 0.7):

* ``dynamo=True`` (the default exporter) runs the onnxscript optimizer, whose
  ``FuseBatchNormIntoConv`` rule folds every BatchNorm that follows a Conv into it: no
  BatchNormalization node is left, the conv weight keeps its PyTorch name (``conv1.weight``)
  but holds ``w * gamma / sqrt(var + eps)``, and the folded bias is a new initializer
  (``conv1.weight_bias``). The batch dim is symbolic (``batch``), opset 20 by default.
* ``dynamo=False`` (legacy TorchScript exporter, opset 17) in eval mode with constant folding
  also fuses Conv+BN; the fused initializers get generated names (``onnx::Conv_146``).
* ``keep_batchnorm=True`` keeps BatchNormalization nodes with the PyTorch names
  (``bn1.weight``, ``bn1.bias``, ``bn1.running_mean`` ...): for dynamo the graph is exported
  unoptimised and only constant-folded; for legacy, constant folding is off and the training
  mode is preserved (the copy is in eval mode).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch
from torch import nn

from ..errors import ModelError
from ..util import atomic_write_bytes, first_line

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
LEGACY_OPSET = 17


def export_torch_model(
    model: nn.Module,
    in_shape: tuple[int, int, int],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
    dynamo: bool = True,
    opset: int | None = None,
    dynamic_batch: bool = True,
    keep_batchnorm: bool = False,
) -> Path:
    """Export ``model`` (a copy, on CPU, in eval mode) to ``path`` and return the path.

    The graph has one input ``input`` of shape (batch, C, H, W) and one output ``logits``;
    ``metadata`` is written to ``metadata_props`` (values must be strings). The model is
    checked with ``onnx.checker.check_model(full_check=True)`` before it is written; nothing
    is printed. Raises ModelError if the export or the check fails.
    """
    if len(in_shape) != 3:
        raise ModelError(f"in_shape must be (C, H, W), got {tuple(in_shape)}")
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ModelError(f"metadata must map strings to strings; key {key!r} has a {type(value).__name__}")
    net = copy.deepcopy(model).cpu().eval()
    example = torch.rand((2, *in_shape), generator=torch.Generator().manual_seed(0))
    with _quiet():
        if dynamo:
            proto = _export_dynamo(net, example, opset, dynamic_batch, keep_batchnorm)
        else:
            proto = _export_legacy(net, example, opset or LEGACY_OPSET, dynamic_batch, keep_batchnorm)
    _set_metadata(proto, metadata or {})
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelError(f"exported model for {path} fails the ONNX check: {first_line(exc)}") from None
    return atomic_write_bytes(path, proto.SerializeToString())


def _export_dynamo(
    net: nn.Module, example: torch.Tensor, opset: int | None, dynamic_batch: bool, keep_batchnorm: bool
) -> onnx.ModelProto:
    kwargs = dict(
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        optimize=not keep_batchnorm,
        external_data=False,
    )
    attempts: list[dict] = [{}]
    if dynamic_batch:
        attempts = [
            {"dynamic_shapes": ({0: torch.export.Dim("batch")},)},
            {"dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}},
        ]
    error: Exception | None = None
    for extra in attempts:
        try:
            program = torch.onnx.export(net, (example,), None, **kwargs, **extra)
            break
        except Exception as exc:  # the exporter raises many types; report the first failure
            error = error or exc
    else:
        raise ModelError(f"torch.onnx.export (dynamo) failed for {type(net).__name__}: {first_line(error)}")
    proto = program.model_proto
    if keep_batchnorm:
        proto = _fold_constants(proto)
    return proto


def _fold_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Constant-fold an unoptimised dynamo graph without the rewrite rules that fuse BatchNorm."""
    import onnx_ir as ir
    from onnxscript import optimizer

    model = ir.serde.deserialize_model(proto)
    optimizer.fold_constants_ir(model)
    optimizer.remove_unused_nodes(model)
    return ir.serde.serialize_model(model)


def _export_legacy(
    net: nn.Module, example: torch.Tensor, opset: int, dynamic_batch: bool, keep_batchnorm: bool
) -> onnx.ModelProto:
    buffer = io.BytesIO()
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    try:
        torch.onnx.export(
            net,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            do_constant_folding=not keep_batchnorm,
            training=torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL,
        )
    except Exception as exc:  # the exporter raises many types
        raise ModelError(f"torch.onnx.export (legacy) failed for {type(net).__name__}: {first_line(exc)}") from None
    return onnx.load_from_string(buffer.getvalue())


def _set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Set ``metadata`` in ``metadata_props``, replacing entries with the same keys."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    for key, value in kept + sorted(metadata.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' prints, warnings and log records for the duration of the block."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
    finally:
        logging.disable(previous)

