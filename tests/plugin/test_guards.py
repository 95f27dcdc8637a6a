"""Bad input fails early with a message that names the problem and the fix, leaving no files."""
from __future__ import annotations

import hashlib
import http.server
import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import pytest
import torch
from openmmml import MLPotential

from openmm_mace_lp.model_files import KnownModel, download_known_model, load_mace_model, resolve_model_path
from openmm_mace_lp.entry_point import MACELPPotentialImplFactory
from openmm_mace_lp.potential import check_cpu_torch, check_cuda

from .helpers import acetamide, model_file, water_box


def test_unknown_policy_and_backend(tmp_path_factory):
    path = str(model_file(tmp_path_factory.getbasetemp()))
    with pytest.raises(ValueError, match=r"Unknown precision policy 'int8'.*fp64, fp32, tf32, bf16, fp16"):
        MLPotential("mace-lp", modelPath=path, policy="int8")
    with pytest.raises(ValueError, match=r"Unknown backend 'triton'.*auto, cueq, cueq-fused, e3nn"):
        MLPotential("mace-lp", modelPath=path, backend="triton")


def test_unknown_model_name():
    with pytest.raises(ValueError, match=r"Unknown model name 'mace-off99-lp'.*mace-lp, mace-off23-small-lp"):
        MACELPPotentialImplFactory().createImpl("mace-off99-lp")
    with pytest.raises(ValueError, match="Unknown model name"):
        resolve_model_path("mace-off99-lp", None)


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; check modelPath="):
        MLPotential("mace-lp", modelPath=str(tmp_path / "nope.model"))


def test_truncated_and_foreign_files(tmp_path, tmp_path_factory):
    good = model_file(tmp_path_factory.getbasetemp()).read_bytes()
    truncated = tmp_path / "truncated.model"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_mace_model(truncated)
    text = tmp_path / "notes.model"
    text.write_text("not a model")
    with pytest.raises(ValueError, match="not a PyTorch-saved model"):
        load_mace_model(text)
    state = tmp_path / "state.model"
    torch.save({"weights": torch.zeros(3)}, state)
    with pytest.raises(ValueError, match="holds a dict, not a MACE model"):
        load_mace_model(state)
    empty = tmp_path / "empty.model"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        load_mace_model(empty)


def test_element_without_parameters(tmp_path_factory):
    path = str(model_file(tmp_path_factory.getbasetemp()))
    system = acetamide()
    topology = app.Topology()
    residue = topology.addResidue("X", topology.addChain())
    for atom in system.topology.atoms():
        topology.addAtom(atom.name, atom.element, residue)
    topology.addAtom("CL", app.element.chlorine, residue)
    potential = MLPotential("mace-lp", modelPath=path)
    with pytest.raises(ValueError, match=r"no parameters for element\(s\) Cl \(Z=17\); it covers only H, C, N, O"):
        potential.createSystem(topology, device="cpu")


def test_cpu_platform_with_new_torch_explains_the_upstream_bug():
    with pytest.raises(RuntimeError, match=r"torch 2.11.*issue #175.*torch 2.9.1.*CUDA platform"):
        check_cpu_torch("CPU", (2, 11))
    with pytest.raises(RuntimeError, match="Reference platform"):
        check_cpu_torch("Reference", (2, 10))
    check_cpu_torch("CPU", (2, 9))
    check_cpu_torch("CUDA", (2, 11))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_a_gpu(tmp_path_factory):
    with pytest.raises(RuntimeError, match="no CUDA device"):
        check_cuda("cuda")
    path = str(model_file(tmp_path_factory.getbasetemp()))
    with pytest.raises(RuntimeError, match="no CUDA device"):
        MLPotential("mace-lp", modelPath=path).createSystem(water_box(1).topology, device="cuda")


def _known(tmp_path: Path, payload: bytes, digest: str | None = None) -> KnownModel:
    source = tmp_path / "remote.model"
    source.write_bytes(payload)
    return KnownModel("test-lp", source.as_uri(), digest or hashlib.sha256(payload).hexdigest(),
                      "test.model", "MIT")


def test_download_verifies_checksum_and_caches(tmp_path):
    cache = tmp_path / "cache"
    known = _known(tmp_path, b"model bytes")
    path = download_known_model(known, cache)
    assert path.read_bytes() == b"model bytes"
    os.unlink(tmp_path / "remote.model")  # second call is served from the cache
    assert download_known_model(known, cache) == path


def test_download_with_wrong_checksum_keeps_nothing(tmp_path):
    cache = tmp_path / "cache"
    known = _known(tmp_path, b"tampered", digest="0" * 64)
    with pytest.raises(RuntimeError, match=r"expected 0{64}.*discarded.*modelPath="):
        download_known_model(known, cache)
    assert list(cache.iterdir()) == []


def test_offline_download_names_model_path(tmp_path):
    known = KnownModel("test-lp", "http://127.0.0.1:9/unreachable.model", "0" * 64, "x.model", "MIT")
    with pytest.raises(RuntimeError, match=r"Cannot download model 'test-lp'.*modelPath='/path/to/x.model'"):
        download_known_model(known, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cpu_device_with_new_torch_is_refused_before_any_export(tmp_path_factory, monkeypatch):
    import openmm_mace_lp.potential as potential_module

    monkeypatch.setattr(potential_module, "torch_version_tuple", lambda: (2, 11))
    path = str(model_file(tmp_path_factory.getbasetemp()))
    exports = Path(os.environ["OPENMM_MACE_LP_CACHE"]) / "exports"
    before = set(exports.glob("*")) if exports.exists() else set()
    with pytest.raises(RuntimeError, match="issue #175"):
        MLPotential("mace-lp", modelPath=path).createSystem(water_box(1).topology, device="cpu")
    after = set(exports.glob("*")) if exports.exists() else set()
    assert after == before


def test_cuda_graphs_default_follows_the_system_size(caplog):
    """Unset: graphs up to CUDA_GRAPH_MAX_ATOMS on CUDA; an explicit True above it is kept but
    warned about (the capture needs twice the memory); never on the CPU."""
    from openmm_mace_lp.potential import CUDA_GRAPH_MAX_ATOMS, use_cuda_graphs

    assert use_cuda_graphs(None, "cuda", CUDA_GRAPH_MAX_ATOMS) is True
    assert use_cuda_graphs(None, "cuda:1", CUDA_GRAPH_MAX_ATOMS + 1) is False
    assert use_cuda_graphs(False, "cuda", 100) is False
    assert use_cuda_graphs(None, "cpu", 100) is False and use_cuda_graphs(True, "cpu", 100) is False
    with caplog.at_level("WARNING"):
        assert use_cuda_graphs(True, "cuda", 50000) is True
    assert "twice the memory" in caplog.text


def test_misspelt_name_through_openmm_ml_lists_the_valid_names():
    """openmm-ml's own lookup used to end in a bare KeyError: 'mace-of24-lp'."""
    with pytest.raises(KeyError) as caught:
        MLPotential("mace-of24-lp")
    message = str(caught.value)
    assert "Unknown potential name 'mace-of24-lp'" in message and "Did you mean 'mace-off24-lp'" in message
    assert "Valid names:" in message and "mace-lp" in message and "mace-off23-small-lp" in message


def test_directory_as_model_path_is_one_clear_line(tmp_path, tmp_path_factory, capsys):
    from openmm_mace_lp.cli import main

    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "water.model").write_bytes(model_file(tmp_path_factory.getbasetemp()).read_bytes())
    with pytest.raises(ValueError) as caught:
        MLPotential("mace-lp", modelPath=str(folder))
    message = str(caught.value)
    assert "\n" not in message and "is a directory" in message and str(folder / "water.model") in message
    system = water_box(1)
    pdb = tmp_path / "water.pdb"
    with open(pdb, "w") as handle:
        app.PDBFile.writeFile(system.topology, system.positions * 10.0 * openmm.unit.angstrom, handle)
    assert main(["export", str(folder), "--topology", str(pdb), "-o", str(tmp_path / "out.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a directory" in err
    assert not (tmp_path / "out.pt").exists()


def test_non_finite_sizing_positions_are_refused(tmp_path_factory):
    path = str(model_file(tmp_path_factory.getbasetemp()))
    system = water_box(2)
    positions = system.positions.copy()
    positions[4] = np.nan
    with pytest.raises(ValueError, match=r"not finite for 1 atom\(s\) \(index 4\).*finite starting positions"):
        MLPotential("mace-lp", modelPath=path).createSystem(system.topology, device="cpu", fixedNeighborList=True,
                                                            positions=positions)


class _TrickleHandler(http.server.BaseHTTPRequestHandler):
    """Sends a large body one small piece at a time: each read succeeds, none finishes it."""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(10**6))
        self.end_headers()
        try:
            for _ in range(400):
                self.wfile.write(b"x" * 10)
                self.wfile.flush()
                time.sleep(0.02)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


def test_download_has_an_overall_deadline(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TrickleHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/slow.model"
        known = KnownModel("test-lp", url, "0" * 64, "slow.model", "MIT")
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"did not finish within 1 s and was discarded.*modelPath="):
            download_known_model(known, tmp_path, deadline_s=1.0)
        assert time.monotonic() - started < 5.0  # the socket timeout alone never fires here
        assert list(tmp_path.iterdir()) == []
    finally:
        server.shutdown()
        server.server_close()


def _embedded_copy(directory: Path) -> Path:
    """The embedded model and its card, copied (the card's digest is read, never hard-coded)."""
    from openmm_mace_lp.model_files import default_model_path

    source = default_model_path()
    for sibling in source.parent.glob(source.stem + ".*"):
        shutil.copy(sibling, directory / sibling.name)
    return directory / source.name


def test_embedded_model_is_checked_against_its_card(tmp_path, tmp_path_factory, monkeypatch):
    import openmm_mace_lp.model_files as model_files

    embedded = _embedded_copy(tmp_path)
    card = embedded.with_suffix(".md").read_text()
    (digest,) = re.findall(r"SHA-256 `([0-9a-f]{64})`", card)
    assert hashlib.sha256(embedded.read_bytes()).hexdigest() == digest
    monkeypatch.setattr(model_files, "embedded_models_dir", lambda: tmp_path)
    assert model_files.expected_sha256(embedded) == digest
    assert float(load_mace_model(embedded).r_max) > 0
    # The same name holding another (valid, loadable) model: refused before unpickling.
    embedded.write_bytes(model_file(tmp_path_factory.getbasetemp()).read_bytes())
    with pytest.raises(ValueError, match=rf"has SHA-256 [0-9a-f]{{64}}, expected {digest}.*not loaded"):
        load_mace_model(embedded)


def test_cached_known_model_is_checked_before_loading(tmp_path, tmp_path_factory, monkeypatch):
    from openmm_mace_lp.model_files import KNOWN_MODELS

    monkeypatch.setenv("OPENMM_MACE_LP_CACHE", str(tmp_path))
    known = KNOWN_MODELS["mace-off24-lp"]
    cached = tmp_path / "models" / known.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(model_file(tmp_path_factory.getbasetemp()).read_bytes())
    with pytest.raises(ValueError, match=rf"expected {known.sha256}"):
        load_mace_model(cached)


@pytest.mark.parametrize("make", [
    lambda topology: MLPotential("mace-lp", polcy="bf16"),
    lambda topology: MLPotential("mace-lp").createSystem(topology, returnEnergytype="energy"),
], ids=["potential", "createSystem"])
def test_a_misspelt_keyword_is_refused_with_a_suggestion(make):
    topology = water_box(1).topology
    with pytest.raises(TypeError, match="Did you mean"):
        make(topology)


@pytest.mark.parametrize("kwargs, message", [
    (dict(platform="Metal"), "not an OpenMM platform"),
    (dict(fixedNeighborList=True, neighborMargin=-0.5), "neighborMargin"),
    (dict(fixedNeighborList=True, neighborMargin=float("nan")), "neighborMargin"),
    (dict(fixedNeighborList=True, neighborList="cells"), "neighborList='cells' is not a neighbour list"),
    (dict(fixedNeighborList=False, neighborList="native"), "pass fixedNeighborList=True"),
])
def test_bad_create_system_values_are_refused(kwargs, message):
    system = water_box(1)
    with pytest.raises(ValueError, match=message):
        MLPotential("mace-lp").createSystem(system.topology, device="cpu", positions=system.positions, **kwargs)


@pytest.mark.parametrize("atoms, message", [([], "selects no atom"), ([0, 0, 1], "more than once"),
                                            ([0, 1, 999], "outside the topology"), ([-1, 0], "outside")])
def test_bad_ml_atom_selections_are_refused(atoms, message):
    from openmm_mace_lp.potential import checked_atom_indices

    with pytest.raises(ValueError, match=message):
        checked_atom_indices(atoms, 6)
    assert checked_atom_indices([3, 1, 2], 6) == [1, 2, 3]
