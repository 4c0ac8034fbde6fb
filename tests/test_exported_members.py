"""The public surface is pinned: adding or removing a name is a deliberate change."""

import trellis


def test_exported_members() -> None:
    assert sorted(trellis.__all__) == sorted(
        [
            "__version__",
            "Trellis",
            "Settings",
            "ModelAlias",
            "Deployment",
            "ChatRequest",
            "ChatResponse",
            "ChatChunk",
            "ChatMessage",
            "EmbeddingRequest",
            "EmbeddingResponse",
            "Gateway",
            "Caller",
            "Router",
            "Provider",
            "TrellisError",
            "create_app",
            "trace",
            "span",
            "traced",
            "score",
        ]
    )
    for name in trellis.__all__:
        assert getattr(trellis, name) is not None
