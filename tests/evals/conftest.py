"""METEOR needs the system's WordNet database: its tests skip without it, with the reason,
except under CI=true, where they fail (CI installs it: scripts/install-wordnet.sh)."""

from __future__ import annotations

import os

import pytest

from trellis.evals.wordnet import WordNetMissingError, wordnet_dir


@pytest.fixture
def wordnet_installed() -> None:
    try:
        wordnet_dir()
    except WordNetMissingError as exc:
        if os.environ.get("CI", "").strip().lower() in ("true", "1"):
            pytest.fail(f"{exc} (CI=true: the METEOR tests must run)", pytrace=False)
        pytest.skip(str(exc))
