"""The pgvector gate: a machine without the extension skips those tests, CI fails them."""

from __future__ import annotations

import pytest

from .conftest import PGVECTOR_MISSING, require_pgvector


def test_available_pgvector_lets_the_test_run() -> None:
    require_pgvector(available=True, ci=True)
    require_pgvector(available=True, ci=False)


def test_missing_pgvector_skips_with_the_reason_outside_ci() -> None:
    with pytest.raises(pytest.skip.Exception, match="install-pgvector.sh"):
        require_pgvector(available=False, ci=False)


def test_missing_pgvector_fails_under_ci() -> None:
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_pgvector(available=False, ci=True)
    assert "pgvector" in PGVECTOR_MISSING
