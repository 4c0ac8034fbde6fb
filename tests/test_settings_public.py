"""Settings shown to people never reveal secrets."""

from trellis.settings import Settings


def test_public_dict_masks_admin_key_and_otlp_headers() -> None:
    settings = Settings(
        admin_key="tr-secret-admin-key-123",
        tracing={"otlp_endpoint": "http://127.0.0.1:4318", "otlp_headers": {"x-token": "abc"}},
    )
    shown = settings.public_dict()
    assert shown["admin_key"] == "***"
    assert shown["tracing"]["otlp_headers"] == {"x-token": "***"}
    assert "abc" not in str(shown) and "tr-secret" not in str(shown)
