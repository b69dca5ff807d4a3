"""Shared fixtures: the real shared data folder, and temp artifact/run roots for runner tests."""
from __future__ import annotations

import pytest

from sidlib import paths


@pytest.fixture(scope="session")
def shared_data():
    root = paths.shared_data()
    if not (root / "amazon2018-scientific").exists():
        pytest.skip(f"shared data folder {root} not found (set SIDLIB_SHARED_DATA)")
    return root


@pytest.fixture
def tmp_roots(tmp_path, monkeypatch):
    """Stage outputs and executed notebooks under a temp folder (papermill kernels inherit env)."""
    monkeypatch.setenv("SIDLIB_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("SIDLIB_RUNS", str(tmp_path / "runs"))
    return tmp_path
