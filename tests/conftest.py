from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"reference material not found at {REFERENCE}: the repository must sit beside shared/")
    return REFERENCE


@pytest.fixture(scope="session")
def official(reference) -> dict:
    """official.yaml: exact parameter counts and fvcore FLOPs of the authors' code."""
    return yaml.safe_load((reference / "official.yaml").read_text())
