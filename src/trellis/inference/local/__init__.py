"""The in-process models Trellis bundles, apart from the hosted-API adapters.

``llama``: the bundled chat model (SmolLM2 on llama.cpp, the ``local`` extra);
``embedder``: the bundled embedding model (MiniLM on onnxruntime), which the
retrieval layer uses directly and the router serves as ``local-embedder``;
``minilm_int8``: rebuilds the embedder's graph on int8 kernels. Each implements
``inference.contract.Provider``; nothing here touches the HTTP client of
``inference/providers/``.
"""
