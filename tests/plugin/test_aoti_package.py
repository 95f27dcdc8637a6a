"""torch.classes.mace_lp.AOTIPackage: an AOTInductor package run from TorchScript (CPU).

A tiny function is compiled once with torch._inductor.aoti_compile_and_package; the package, held
by a scripted module, must give the eager results, also after torch.jit.save / torch.jit.load with
the .pt2 file gone (the object pickles its bytes). Bad input must fail with a message naming it.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from openmm_mace_lp import native

TOLERANCE = dict(rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module", autouse=True)
def _native_library():
    """CI builds the CPU library: its absence is a failure here, unless turned off on purpose."""
    if native.disabled_by_environment():
        pytest.skip("OPENMM_MACE_LP_NATIVE=0 turns the native library off")
    assert native.available("cpu"), native.state().problem


def f(x: torch.Tensor, w: torch.Tensor):
    y = torch.tanh(x @ w)
    return y.sum(), y * 2


class Eager(torch.nn.Module):
    def forward(self, x, w):
        return f(x, w)


class Packaged(torch.nn.Module):
    def __init__(self, package_bytes: torch.Tensor):
        super().__init__()
        self.package = torch.classes.mace_lp.AOTIPackage(package_bytes)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
        return self.package.run([x, w])


def inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(4, 3, dtype=torch.float64, generator=generator),
            torch.randn(3, 5, dtype=torch.float64, generator=generator))


def read_bytes(path: Path) -> torch.Tensor:
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)


@pytest.fixture(scope="module")
def package_path(tmp_path_factory) -> Path:
    """The compiled package (once per module: the Inductor compile takes seconds)."""
    path = tmp_path_factory.mktemp("aoti") / "f.pt2"
    exported = torch.export.export(Eager(), inputs())
    return Path(torch._inductor.aoti_compile_and_package(exported, package_path=str(path)))


def check(outputs, x, w):
    total, doubled = f(x, w)
    assert len(outputs) == 2
    torch.testing.assert_close(outputs[0], total, **TOLERANCE)
    torch.testing.assert_close(outputs[1], doubled, **TOLERANCE)


def test_scripted_module_runs_package(package_path, tmp_path, monkeypatch):
    # Our temporary copy of the package goes to $TMPDIR and must be gone once the loader exists.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    package_bytes = read_bytes(package_path)
    scripted = torch.jit.script(Packaged(package_bytes))
    assert scripted.package.num_bytes() == package_bytes.numel()
    for seed in (1, 2):
        x, w = inputs(seed)
        check(scripted(x, w), x, w)
    assert not list(scratch.glob("mace_lp_aoti_*.pt2"))


def test_save_load_without_package_file(package_path, tmp_path):
    package_file = tmp_path / "copy.pt2"
    package_file.write_bytes(package_path.read_bytes())
    scripted = torch.jit.script(Packaged(read_bytes(package_file)))
    saved = tmp_path / "module.pt"
    torch.jit.save(scripted, str(saved))
    package_file.unlink()
    del scripted
    loaded = torch.jit.load(str(saved))
    assert loaded.package.num_bytes() == package_path.stat().st_size
    x, w = inputs(3)
    check(loaded(x, w), x, w)


def test_bad_input_is_named(package_path):
    with pytest.raises(RuntimeError, match="loading the AOTInductor package"):
        torch.classes.mace_lp.AOTIPackage(torch.zeros(64, dtype=torch.uint8)).run(list(inputs()))
    with pytest.raises(RuntimeError, match="1-D uint8 tensor"):
        torch.classes.mace_lp.AOTIPackage(torch.zeros(64, dtype=torch.float32))
    with pytest.raises(RuntimeError, match="no inputs"):
        torch.classes.mace_lp.AOTIPackage(read_bytes(package_path)).run([])
