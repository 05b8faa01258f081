"""Shared fixtures: random-weight model dirs in the HF layout, made once per session."""

from __future__ import annotations

import pytest

from frontend.make_model import make_model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """``model_dir(preset, dtype="f32", seed=0, shards=1)`` -> path, cached per argument set."""
    made: dict[tuple, object] = {}

    def get(preset: str, dtype: str = "f32", seed: int = 0, shards: int = 1):
        key = (preset, dtype, seed, shards)
        if key not in made:
            made[key] = make_model(tmp_path_factory.mktemp(f"{preset}-{dtype}") / "model", preset, dtype, seed, shards)
        return made[key]

    return get
