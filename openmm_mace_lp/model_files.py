"""Model-file stage: find (download, verify, cache) and load a MACE model.

Known models are fetched from their published URLs into a user cache, checked against a
SHA-256 digest and written atomically, so an interrupted download never leaves a file that
looks valid. Local files are checked before torch unpickles them, so a missing, truncated or
foreign file fails with a message that says what to do.
"""
from __future__ import annotations

import hashlib
import os
import shutil
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
DEFAULT_MODEL_FILE = "mace-water-gfn2.model"


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


def default_model_path() -> Path:
    """The MACE water model trained by this project, shipped inside the package."""
    from openmm_mace_lp import systems

    path = Path(systems.__file__).parent / "models" / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"The embedded default model {path} is missing from this installation; reinstall "
            f"openmm-mace-lp or pass modelPath='your.model'."
        )
    return path


def download_known_model(model: KnownModel, directory: Optional[Path] = None) -> Path:
    """Return the cached file of a known model, downloading and verifying it if needed."""
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
    try:
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as local, urllib.request.urlopen(model.url, timeout=60) as remote:
                shutil.copyfileobj(remote, local)
            digest = sha256_of(tmp)
            if digest != model.sha256:  # raised inside: the download is discarded
                raise RuntimeError(
                    f"Downloaded {model.url} has SHA-256 {digest}, expected {model.sha256}; the file "
                    f"was discarded. {offline_hint}"
                )
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


def check_model_file(path: Path) -> None:
    """Fail clearly on a missing, empty, truncated or non-torch file before unpickling."""
    if not path.exists():
        raise FileNotFoundError(f"MACE model file {path} does not exist; check modelPath=.")
    if not path.is_file():
        raise ValueError(f"MACE model path {path} is not a file; pass the .model file itself as modelPath=.")
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


def load_mace_model(path: os.PathLike):
    """Load a MACE model saved by mace-torch (a pickled torch module) on the CPU, checked."""
    import mace  # noqa: F401  (mace must be imported before e3nn/torch.load of its classes)
    import torch

    path = Path(path)
    check_model_file(path)
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
