"""Reading (compressed) extended XYZ files quickly."""
from __future__ import annotations

import gzip
import io
import lzma
from pathlib import Path

COMPRESSED = {".xz": lzma.open, ".gz": gzip.open}


def read_frames(path) -> list:
    """All frames of an (optionally .xz/.gz) extxyz file as ase.Atoms, fast.

    ``ase.io.read(path_to_xz, index=":")`` works but is quadratic in the file size: its
    extxyz reader seeks back one line after every frame, and a backwards seek in a
    compressed stream restarts decompression from the top (minutes for the train file).
    Decompressing into memory first takes well under a second."""
    import ase.io

    path = Path(path)
    opener = COMPRESSED.get(path.suffix)
    if opener is None:
        text = path.read_text()
    else:
        with opener(path, "rt") as handle:
            text = handle.read()
    return ase.io.read(io.StringIO(text), index=":", format="extxyz")
