"""Fuzz: random byte mutations of config.json and of the safetensors header either load or raise the
clean one-line ``UserError`` naming the file; nothing else (no KeyError, no numpy error, no crash)."""

from __future__ import annotations

import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import UserError
from frontend.checkpoint import WeightStore
from frontend.config import load_config
from frontend.weights import expected_params

SETTINGS = settings(max_examples=250, derandomize=True, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# a mutation: (relative position in [0, 1), kind, byte)
MUTATIONS = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.sampled_from(["set", "insert", "delete"]),
                               st.integers(0, 255)), min_size=1, max_size=6)
# JSON-ish bytes are likelier to reach the deeper checks than uniform noise
INTERESTING = b'{}[]":,-0123456789.eEtruefalsnul '


def _mutate(data: bytes, muts) -> bytes:
    b = bytearray(data)
    for pos, kind, byte in muts:
        i = int(pos * len(b)) if b else 0
        byte = INTERESTING[byte % len(INTERESTING)] if byte < 128 else byte
        if kind == "set" and b:
            b[i] = byte
        elif kind == "insert":
            b.insert(i, byte)
        elif b:
            del b[i]
    return bytes(b)


def _load(d: Path) -> None:
    try:
        WeightStore(d, expected_params(load_config(d)))
    except UserError as e:
        msg = str(e)
        assert "\n" not in msg and str(d) in msg, msg


@pytest.fixture(scope="module")
def tiny(model_dir):
    return model_dir("tiny", "f32")


@SETTINGS
@given(muts=MUTATIONS)
def test_fuzz_config_json(tiny, muts):
    with tempfile.TemporaryDirectory() as t:
        d = Path(t)
        (d / "model.safetensors").symlink_to(tiny / "model.safetensors")
        (d / "config.json").write_bytes(_mutate((tiny / "config.json").read_bytes(), muts))
        _load(d)


@SETTINGS
@given(muts=MUTATIONS, length_delta=st.sampled_from([0, 0, 0, 1, -1, 8, -8, 1 << 40]))
def test_fuzz_safetensors_header(tiny, muts, length_delta):
    raw = (tiny / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = _mutate(raw[8:8 + n], muts)
    new_len = max(0, len(header) + length_delta)
    with tempfile.TemporaryDirectory() as t:
        d = Path(t)
        shutil.copy(tiny / "config.json", d / "config.json")
        (d / "model.safetensors").write_bytes(struct.pack("<Q", new_len) + header + raw[8 + n:])
        _load(d)
