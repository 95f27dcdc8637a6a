"""Bad input fails early with a message that names the problem and the fix, leaving no files."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

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
