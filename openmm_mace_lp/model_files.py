"""Model-file stage: find (download, verify, cache) and load a MACE model.

A MACE ``.model`` file is a pickle: loading it runs whatever code the file names, so only
load files you trust. Known models are fetched from their published URLs into a user cache
(with an overall deadline), checked against a SHA-256 digest and written atomically, so an
interrupted download never leaves a file that looks valid; the embedded model is checked
against the SHA-256 on its model card. Both checks run again right before every unpickling.
Local files are checked before torch unpickles them, so a missing, truncated or foreign file
(or a directory) fails with a message that says what to do.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .atomic import atomic_path

_OFF23 = "https://github.com/ACEsuit/mace-off/raw/main/mace_off23"
_OFF24 = "https://github.com/ACEsuit/mace-off/raw/v0.2/mace_off24"


@dataclass(frozen=True)
class KnownModel:
    name: str
    url: str
    sha256: str
    filename: str
    licence: str


# Digests as published alongside these files by third-party records (not verifiable offline
# here); a mismatch stops the load and says how to pass a file explicitly.
KNOWN_MODELS = {
    m.name: m
    for m in (
        KnownModel("mace-off23-small-lp", f"{_OFF23}/MACE-OFF23_small.model",
                   "165cce4cfec5a34b9c64d4ebf95de15d71106bb584b7291c8470f0749977c46f",
                   "MACE-OFF23_small.model", "ASL"),
        KnownModel("mace-off23-medium-lp", f"{_OFF23}/MACE-OFF23_medium.model",
                   "4842c52ad210d6e1f84d6cf1ffa70fae25a7e0d755ed55cf223f43913f587db7",
                   "MACE-OFF23_medium.model", "ASL"),
        KnownModel("mace-off23-large-lp", f"{_OFF23}/MACE-OFF23_large.model",
                   "a29e397dbf3e7a24ac50a9b0dfc919bd5a62efa346f5895a6237b0950c1d76f4",
                   "MACE-OFF23_large.model", "ASL"),
        KnownModel("mace-off24-lp", f"{_OFF24}/MACE-OFF24_medium.model",
                   "e5ccf5837f685899811a68754e7c994393bfd1a81720393b03c643b46c70bc69",
                   "MACE-OFF24_medium.model", "ASL"),
    )
}

LOCAL_MODEL_NAME = "mace-lp"
# The embedded model, first one present: the AMOEBA-trained model replaces the GFN2-xTB one.
EMBEDDED_MODEL_FILES = ("mace-water-amoeba.model", "mace-water-gfn2.model")
# A download that has not finished after this long is abandoned (the socket timeout alone
# would let a server that trickles bytes keep it going for ever).
DOWNLOAD_DEADLINE_S = 1800.0
_SOCKET_TIMEOUT_S = 60.0
_CARD_DIGEST = re.compile(r"SHA-256 `([0-9a-f]{64})`")


def cache_dir() -> Path:
    """Where downloaded models and exported TorchScript files live."""
    root = os.environ.get("OPENMM_MACE_LP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "openmm-mace-lp"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_of(path: os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embedded_models_dir() -> Path:
    """The folder of the models shipped inside the package (``systems/models``)."""
    from openmm_mace_lp import systems

    return Path(systems.__file__).parent / "models"


def default_model_path() -> Path:
    """The MACE water model trained by this project, shipped inside the package."""
    directory = embedded_models_dir()
    for name in EMBEDDED_MODEL_FILES:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"The embedded default model ({' or '.join(EMBEDDED_MODEL_FILES)}) is missing from "
        f"{directory}; reinstall openmm-mace-lp or pass modelPath='your.model'."
    )


def card_sha256(model_path: os.PathLike) -> str:
    """The SHA-256 an embedded model's card (``<name>.md``, else ``<name>.test_errors.json``) gives."""
    path = Path(model_path)
    card = path.with_suffix(".md")
    if card.is_file():
        found = _CARD_DIGEST.search(card.read_text(encoding="utf-8"))
        if found:
            return found.group(1)
    errors = path.with_name(path.stem + ".test_errors.json")
    if errors.is_file():
        digest = json.loads(errors.read_text(encoding="utf-8")).get("model_sha256")
        if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest):
            return digest
    raise ValueError(
        f"The embedded model {path.name} has no card giving its SHA-256 ({card.name} with a line "
        f"'SHA-256 `<digest>`', or {errors.name}); reinstall openmm-mace-lp."
    )


def expected_sha256(path: os.PathLike) -> Optional[str]:
    """The digest a file must have to be loaded: the card's for the embedded model, the
    registry's for a cached known model, None for any other file (the user's own)."""
    path = Path(path)
    try:
        resolved = path.resolve()
    except OSError:
        return None
    if resolved.parent == embedded_models_dir().resolve():
        return card_sha256(resolved)
    known = {m.filename: m for m in KNOWN_MODELS.values()}
    if resolved.name in known and resolved.parent == (cache_dir() / "models").resolve():
        return known[resolved.name].sha256
    return None


def verify_sha256(path: os.PathLike, expected: str) -> None:
    """Refuse a file whose SHA-256 is not ``expected`` (before anything unpickles it)."""
    found = sha256_of(path)
    if found != expected:
        raise ValueError(
            f"{path} has SHA-256 {found}, expected {expected}: the file is corrupt or was "
            f"replaced. It was not loaded (a .model file is a pickle and runs code when "
            f"loaded); reinstall or re-download it, or pass your own file as modelPath=."
        )


def _copy_with_deadline(remote, local, deadline: float) -> None:
    """Copy a response to a file in blocks, giving up once ``deadline`` (monotonic) has passed."""
    # read1 returns what has arrived (at most one socket read), so a server that trickles
    # bytes cannot hold a single call for longer than the socket timeout.
    read = getattr(remote, "read1", remote.read)
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("the download did not finish in time")
        block = read(1 << 16)
        if not block:
            return
        local.write(block)


def download_known_model(model: KnownModel, directory: Optional[Path] = None,
                         deadline_s: float = DOWNLOAD_DEADLINE_S) -> Path:
    """Return the cached file of a known model, downloading and verifying it if needed.

    The whole download must finish within ``deadline_s`` seconds; otherwise it is discarded.
    """
    directory = directory or cache_dir() / "models"
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / model.filename
    if target.is_file() and sha256_of(target) == model.sha256:
        return target
    offline_hint = (
        f"Download {model.url} on a machine with internet access and pass its path, e.g. "
        f"MLPotential('{LOCAL_MODEL_NAME}', modelPath='/path/to/{model.filename}'), "
        f"or copy it to {target}."
    )
    deadline = time.monotonic() + deadline_s
    try:
        with atomic_path(target) as tmp:
            timeout = min(_SOCKET_TIMEOUT_S, deadline_s)
            with open(tmp, "wb") as local, urllib.request.urlopen(model.url, timeout=timeout) as remote:
                _copy_with_deadline(remote, local, deadline)
            digest = sha256_of(tmp)
            if digest != model.sha256:  # raised inside: the download is discarded
                raise RuntimeError(
                    f"Downloaded {model.url} has SHA-256 {digest}, expected {model.sha256}; the file "
                    f"was discarded. {offline_hint}"
                )
    except TimeoutError:
        raise RuntimeError(
            f"Cannot download model {model.name!r}: it did not finish within {deadline_s:g} s and "
            f"was discarded. {offline_hint}"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        raise RuntimeError(f"Cannot download model {model.name!r} ({error}). {offline_hint}") from None
    return target


def resolve_model_path(name: str, model_path: Optional[os.PathLike]) -> Path:
    """The file behind a potential name: explicit path, known model, or the embedded default."""
    if model_path is not None:
        return Path(model_path)
    if name in KNOWN_MODELS:
        return download_known_model(KNOWN_MODELS[name])
    if name == LOCAL_MODEL_NAME:
        return default_model_path()
    valid = ", ".join([LOCAL_MODEL_NAME, *KNOWN_MODELS])
    raise ValueError(f"Unknown model name {name!r}. Valid names: {valid}.")


def check_model_path(path: os.PathLike) -> None:
    """The cheap checks of a ``modelPath``: it exists and is a file (one line each)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"MACE model file {path} does not exist; check modelPath=.")
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.model"))
        example = f"'{path / inside[0]}'" if inside else "'/path/to/your.model'"
        raise ValueError(f"modelPath={str(path)!r} is a directory; pass the .model file itself, "
                         f"e.g. modelPath={example}.")
    if not path.is_file():
        raise ValueError(f"MACE model path {path} is not a regular file; pass the .model file as modelPath=.")


def check_model_file(path: Path) -> None:
    """Fail clearly on a missing, empty, truncated or non-torch file (or a folder) before unpickling."""
    check_model_path(path)
    if path.stat().st_size == 0:
        raise ValueError(f"MACE model file {path} is empty; re-download or re-train it.")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a PyTorch-saved model (no zip archive found): it is truncated or "
            f"not a MACE model. Re-download it or pass the file saved by mace's training "
            f"(a .model file) as modelPath=."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"MACE model file {path} is truncated or corrupt ({error}); re-download it.") from None
    if bad is not None:
        raise ValueError(f"MACE model file {path} is corrupt (member {bad} fails its CRC); re-download it.")


def load_mace_model(path: os.PathLike, sha256: Optional[str] = None):
    """Load a MACE model saved by mace-torch (a pickled torch module) on the CPU, checked.

    The file is unpickled (``weights_only=False``: a MACE model is a pickled module), so it
    must be trusted. The embedded model and cached known models are first checked against
    their recorded SHA-256 (``expected_sha256``), any file against ``sha256`` when given.
    """
    import torch

    from .upstream import import_mace

    import_mace()  # mace's classes must be importable before unpickling
    path = Path(path)
    check_model_file(path)
    expected = sha256 or expected_sha256(path)
    if expected is not None:
        verify_sha256(path, expected)
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - unpickling can fail in many ways
        raise ValueError(
            f"Cannot load {path} as a MACE model ({type(error).__name__}: {error}). It may be "
            f"truncated, saved by an incompatible mace-torch (tested: 0.3.16), or not a MACE model."
        ) from None
    if isinstance(model, dict) or not isinstance(model, torch.nn.Module):
        raise ValueError(
            f"{path} holds a {type(model).__name__}, not a MACE model; pass a full model file "
            f"saved by mace-torch (torch.save(model)), not a state dict or checkpoint."
        )
    for attribute in ("atomic_numbers", "r_max", "interactions", "products", "readouts"):
        if not hasattr(model, attribute):
            raise ValueError(
                f"{path} holds a {type(model).__name__} without '{attribute}': not a MACE energy "
                f"model this plug-in can run."
            )
    return model.eval()


def model_cutoff(path: os.PathLike) -> float:
    """The model's r_max in Angstrom (loads the model; the export cache does not need it)."""
    return float(load_mace_model(path).r_max)
