"""Resolving provider secret references, however the reference was stored: only a
regular file is read, and never more than the cap, so a reference to a device, a FIFO
or a huge file cannot stall or exhaust ingest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.channels.secrets import MAX_SECRET_BYTES, SecretReferenceError, resolve_secret


def test_files_and_variables_resolve_to_their_stripped_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "key"
    secret.write_text("AC123:token\n")
    monkeypatch.setenv("PIGEON_KEY", "k")
    assert resolve_secret(f"file:{secret}") == "AC123:token"
    assert resolve_secret("env:PIGEON_KEY") == "k"
    assert resolve_secret(None) is None
    assert resolve_secret("  ") is None
    largest = tmp_path / "largest"
    largest.write_bytes(b"x" * MAX_SECRET_BYTES)
    assert resolve_secret(f"file:{largest}") == "x" * MAX_SECRET_BYTES


def test_devices_and_fifos_are_refused_without_reading_them(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: opening it for reading would block, reading it too
    for path in ("/dev/zero", "/dev/urandom", str(fifo), str(tmp_path)):
        with pytest.raises(SecretReferenceError, match="not a regular file"):
            resolve_secret(f"file:{path}")


def test_a_file_over_the_cap_is_refused(tmp_path: Path) -> None:
    huge = tmp_path / "huge"
    huge.write_bytes(b"x" * (MAX_SECRET_BYTES + 1))
    with pytest.raises(SecretReferenceError, match="larger than"):
        resolve_secret(f"file:{huge}")


def test_unreadable_and_unknown_references_are_refused(tmp_path: Path) -> None:
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    for reference in (
        f"file:{tmp_path / 'missing'}",
        f"file:{binary}",
        "env:OMNI_TEST_SURELY_UNSET_VARIABLE",
        "vault:secret/data/x",
    ):
        with pytest.raises(SecretReferenceError):
            resolve_secret(reference)
