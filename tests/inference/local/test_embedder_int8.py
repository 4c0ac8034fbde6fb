"""The int8 rebuild of the bundled MiniLM: close to the fp32 graph, cached, order-preserving."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import numpy as np
import pytest

from trellis.errors import ContextLengthExceededError
from trellis.inference.local import minilm_int8
from trellis.inference.local.embedder import MiniLMEmbedder, bundled_embedding_paths

pytestmark = pytest.mark.model

TEXTS = [
    "A man is eating food.",
    "How do I bake sourdough bread at home?",
    "",
    "Ünïcödé, emoji 🚀 and CJK 漢字 survive tokenization.",
    "experimental investigation of the aerodynamics of a wing in a slipstream. an "
    "experimental study of a wing in a propeller slipstream was made in order to determine "
    "the spanwise distribution of the lift increase due to slipstream at different angles "
    "of attack of the wing and at different free stream to slipstream velocity ratios.",
    "The boundary layer on a flat plate in supersonic flow separates ahead of a step; "
    "the pressure rise to separation depends on the Mach number and on the Reynolds number "
    "of the layer, but hardly on the height of the step. " * 3,
    "Quarterly revenue grew by twelve percent.",
]


@pytest.fixture(scope="module")
def fp32() -> MiniLMEmbedder:
    return MiniLMEmbedder(int8=False)


@pytest.fixture(scope="module")
def int8() -> MiniLMEmbedder:
    """Every text through the int8 graph (by default short ones take the fp32 graph)."""
    embedder = MiniLMEmbedder(exact_below=0)
    embedder.load()
    return embedder


def test_int8_is_the_default_and_close_to_fp32(int8: MiniLMEmbedder, fp32: MiniLMEmbedder) -> None:
    default = MiniLMEmbedder()
    default.load()
    assert default.graph == int8.graph == "int8"
    fp32.load()
    assert fp32.graph == "fp32"
    cosines = np.sum(int8.embed(TEXTS) * fp32.embed(TEXTS), axis=1)
    # Measured on 400 Cranfield chunks: mean 0.995, worst 0.990.
    assert cosines.min() > 0.98, cosines
    assert cosines.mean() > 0.99, cosines


def test_short_texts_take_the_exact_graph_and_long_ones_int8(
    int8: MiniLMEmbedder, fp32: MiniLMEmbedder
) -> None:
    default = MiniLMEmbedder()
    counts = [default.count_tokens(text) for text in TEXTS]
    short = [i for i, count in enumerate(counts) if count <= default.exact_below]
    long = [i for i, count in enumerate(counts) if count > default.exact_below]
    assert short and long
    vectors = default.embed(TEXTS)
    np.testing.assert_allclose(vectors[short], fp32.embed([TEXTS[i] for i in short]), atol=1e-4)
    np.testing.assert_allclose(vectors[long], int8.embed([TEXTS[i] for i in long]), atol=1e-5)


def test_int8_keeps_the_model_window(int8: MiniLMEmbedder) -> None:
    at_limit = "hello " * 254
    assert int8.embed([at_limit]).shape == (1, 384)
    with pytest.raises(ContextLengthExceededError):
        int8.embed([at_limit + "hello"])


def test_int8_vectors_do_not_depend_on_the_rest_of_the_call(int8: MiniLMEmbedder) -> None:
    together = int8.embed(TEXTS * 2)
    alone = np.stack([int8.embed([text])[0] for text in TEXTS])
    np.testing.assert_allclose(together, np.tile(alone, (2, 1)), atol=1e-5)


@pytest.mark.parametrize("use_int8", [False, True])
def test_length_sorted_batches_come_back_in_input_order(use_int8: bool) -> None:
    embedder = MiniLMEmbedder(int8=use_int8, batch_size=3, exact_below=0)
    # Longest first, so sorting by length reorders every batch.
    texts = sorted(TEXTS, key=len, reverse=True)
    batched = embedder.embed(texts)
    alone = np.stack([embedder.embed([text])[0] for text in texts])
    similarity = batched @ alone.T
    assert list(np.argmax(similarity, axis=1)) == list(range(len(texts)))
    if not use_int8:  # fp32 is batch-invariant up to rounding
        np.testing.assert_allclose(batched, alone, atol=1e-4)
    else:  # int8 shares one activation scale per run: why its default batch is one text
        assert np.diag(similarity).min() > 0.95


def test_concurrent_calls_match_serial_ones(int8: MiniLMEmbedder) -> None:
    expected = [int8.embed([text]) for text in TEXTS]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda text: int8.embed([text]), TEXTS * 3))
    for index, result in enumerate(results):
        np.testing.assert_allclose(result, expected[index % len(TEXTS)], atol=1e-5)


def test_rebuilt_graph_is_cached_and_reused(
    tmp_path: Path, int8: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = MiniLMEmbedder(cache_dir=tmp_path, exact_below=0)
    first.load()
    (cached,) = tmp_path.glob("minilm-int8-v*.onnx")
    assert not list(tmp_path.glob("*.tmp"))
    stamp = cached.stat().st_mtime_ns

    def no_rebuild(source: object, **options: object) -> bytes:
        raise AssertionError("the cached graph should have been used")

    monkeypatch.setattr(minilm_int8, "build_int8_model", no_rebuild)
    second = MiniLMEmbedder(cache_dir=tmp_path, exact_below=0)
    second.load()
    assert second.graph == "int8"
    assert cached.stat().st_mtime_ns == stamp
    np.testing.assert_allclose(second.embed(TEXTS), int8.embed(TEXTS), atol=1e-5)


def test_a_graph_it_cannot_rebuild_runs_in_fp32(
    fp32: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unknown_layout(source: object, **options: object) -> bytes:
        raise minilm_int8.GraphLayoutError("not a BERT encoder")

    monkeypatch.setattr(minilm_int8, "build_int8_model", unknown_layout)
    embedder = MiniLMEmbedder()
    embedder.load()
    assert embedder.graph == "fp32"
    assert "cannot rebuild" in caplog.text
    np.testing.assert_allclose(embedder.embed(TEXTS[:3]), fp32.embed(TEXTS[:3]), atol=1e-4)


def test_builder_refuses_a_graph_that_is_not_bert(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "not-bert",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "identity.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    with pytest.raises(minilm_int8.GraphLayoutError):
        minilm_int8.build_int8_model(path)


def test_builder_uses_the_shipped_int8_weights_unchanged() -> None:
    import onnx
    from onnx import numpy_helper

    source, _ = bundled_embedding_paths()
    built = onnx.load_from_string(minilm_int8.build_int8_model(source))
    shipped = {
        init.name: numpy_helper.to_array(init)
        for init in onnx.load(str(source)).graph.initializer
        if init.data_type == onnx.TensorProto.INT8
    }
    weights = {
        init.name: numpy_helper.to_array(init)
        for init in built.graph.initializer
        if init.name.endswith(".w")
    }
    assert len(weights) == 6 * 4  # per layer: QKV, attention output, FFN in and out
    ffn_in = weights["layer0.ffn_in.w"]
    assert ffn_in.dtype == np.int8
    assert any(np.array_equal(ffn_in, value) for value in shipped.values())


def test_parallel_runs_match_a_single_threaded_embedder(int8: MiniLMEmbedder) -> None:
    single = MiniLMEmbedder(threads=1, exact_below=0)
    texts = TEXTS * 3
    if int8.threads > 1:
        assert int8._workers is not None
    np.testing.assert_allclose(int8.embed(texts), single.embed(texts), atol=1e-5)
    assert single._workers is None


def test_weight_format_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(minilm_int8.platform, "machine", lambda: "x86_64")
    assert minilm_int8.signed_weights_are_exact("fpu sse avx2 avx512f avx512_vnni")
    assert minilm_int8.signed_weights_are_exact("fpu sse avx2 avx_vnni")
    assert not minilm_int8.signed_weights_are_exact("fpu sse sse4_2 avx avx2 fma")
    monkeypatch.setattr(minilm_int8.platform, "machine", lambda: "aarch64")
    assert minilm_int8.signed_weights_are_exact("fp asimd")


def test_unsigned_weights_are_the_shipped_ones_shifted_and_stay_close_to_fp32(
    fp32: MiniLMEmbedder,
) -> None:
    import onnx
    import onnxruntime
    from onnx import numpy_helper

    source, _ = bundled_embedding_paths()
    signed = onnx.load_from_string(minilm_int8.build_int8_model(source))
    built = minilm_int8.build_int8_model(source, unsigned_weights=True)
    unsigned = onnx.load_from_string(built)

    def tensors(model: onnx.ModelProto, suffix: str) -> dict[str, np.ndarray]:
        return {
            init.name: numpy_helper.to_array(init)
            for init in model.graph.initializer
            if init.name.endswith(suffix)
        }

    for name, weights in tensors(signed, ".w").items():
        shifted = tensors(unsigned, ".w")[name]
        assert shifted.dtype == np.uint8
        np.testing.assert_array_equal(shifted.astype(np.int16) - 128, weights)
    assert all((zero == 128).all() for zero in tensors(unsigned, ".zero").values())

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = onnxruntime.InferenceSession(built, options, providers=["CPUExecutionProvider"])
    embedder = MiniLMEmbedder(exact_below=0)
    tokenizer, _ = embedder._loaded()
    long = [text for text in TEXTS if embedder.count_tokens(text) > 16]
    for text, reference in zip(long, fp32.embed(long), strict=True):
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
        }
        hidden = session.run(None, feeds)[0][0].mean(axis=0)
        assert hidden @ reference / np.linalg.norm(hidden) > 0.99
