"""One ONNX file holding an INT8 model and its fp32 original, chosen per call by a `precise` switch (an If node)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..constants import INPUT_NAME, INPUT_PRECISE
from ..errors import ExportError
from ..serving.other_bird import OtherBird
from ..serving.second_look import SecondLook

__all__ = ["with_second_look", "served_outputs", "species_kept"]


def _branch(model: Any, prefix: str) -> Any:
    """`model`'s graph as an If branch: every name but the shared input prefixed (ONNX names are unique)."""
    import onnx
    from onnx import helper

    rename = lambda name: name if name in (INPUT_NAME, "") else prefix + name  # noqa: E731
    graph = model.graph
    branch = helper.make_graph([], prefix.strip("/"), [], [])
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = prefix + node.name
        del copy.input[:], copy.output[:]
        copy.input.extend(rename(i) for i in node.input)
        copy.output.extend(rename(o) for o in node.output)
        branch.node.append(copy)
    for tensor in graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = prefix + tensor.name
        branch.initializer.append(copy)
    for value in graph.output:
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(value)
        copy.name = prefix + value.name
        branch.output.append(copy)
    return branch


def with_second_look(fp32: Any, int8: Any) -> Any:
    """A model whose outputs are `int8`'s by default and `fp32`'s when fed `precise=True`: one file to ship, and
    onnxruntime runs only the branch asked for (an If node; `precise` is an initializer callers may override)."""
    import onnx
    from onnx import TensorProto, helper

    if [o.name for o in fp32.graph.output] != [o.name for o in int8.graph.output]:
        raise ExportError("the INT8 and fp32 models must have the same outputs")
    choose = helper.make_node("If", [INPUT_PRECISE], [o.name for o in fp32.graph.output], name="precision",
                              then_branch=_branch(fp32, "fp32/"), else_branch=_branch(int8, "int8/"))
    graph = helper.make_graph([choose], fp32.graph.name or "birdclf",
                              [fp32.graph.input[0], helper.make_tensor_value_info(INPUT_PRECISE, TensorProto.BOOL, [])],
                              list(fp32.graph.output),
                              initializer=[helper.make_tensor(INPUT_PRECISE, TensorProto.BOOL, [], [False])])
    model = helper.make_model(graph, opset_imports=list(int8.opset_import), ir_version=int8.ir_version,
                              producer_name="birdclf")
    model.metadata_props.extend(int8.metadata_props)
    onnx.checker.check_model(model)
    return model


def _calibrated(out: list[np.ndarray], temperature: float, other_bird: OtherBird | None) -> np.ndarray:
    """The Predictor's probabilities from a model's raw outputs (the other-bird logit is the last output)."""
    from ..serving.predictor import calibrated

    return calibrated(out[0], temperature, out[-1] if other_bird is not None else None)


def served_outputs(fp32: list[np.ndarray], int8: list[np.ndarray], rule: SecondLook, temperature: float,
                   species_threshold: float, bird_threshold: float,
                   other_bird: OtherBird | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """What the Predictor serves from the INT8 model with its second look, given both models' raw outputs on the
    same batch: (outputs, which rows were looked at again)."""
    n = int8[0].shape[1]
    probs = _calibrated(int8, temperature, other_bird)
    bird = int8[1].reshape(-1).astype(np.float64) if len(int8) > 1 else None
    other = probs[:, n] if other_bird is not None else None
    again = rule.rows(probs[:, :n], bird, species_threshold, bird_threshold, other, other_bird)
    return [np.where(again.reshape((-1,) + (1,) * (a.ndim - 1)), b, a) for a, b in zip(int8, fp32)], again


def species_kept(reference: list[np.ndarray], other: list[np.ndarray], temperature: float, species_threshold: float,
                 bird_threshold: float, other_bird: OtherBird | None = None) -> float | None:
    """Of the inputs `reference` answers `species`, the share `other` answers `species` with the same label."""
    from ..serving.predictor import verdict_of

    def answers(out: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        n = out[0].shape[1]
        calibrated = _calibrated(out, temperature, other_bird)
        probs = calibrated[:, :n]
        held = calibrated[:, n] if other_bird is not None else [None] * len(probs)
        bird = out[1].reshape(-1) if len(out) > 1 else [None] * len(probs)
        sure = [verdict_of(float(p.max()), None if b is None else float(b), bird_threshold, species_threshold,
                           None if h is None else float(h), other_bird) == "species"
                for p, b, h in zip(probs, bird, held)]
        return np.array(sure, bool), probs.argmax(1)

    (ref_sure, ref_top), (sure, top) = answers(reference), answers(other)
    return float((sure & (top == ref_top))[ref_sure].mean()) if ref_sure.any() else None
