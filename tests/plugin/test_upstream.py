"""Using the package leaves torch.load strict, and its entry points are quiet about known-harmless
upstream messages (and only those)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from openmm_mace_lp.upstream import without_dcd_plugin_lines

from .helpers import model_file

ROOT = Path(__file__).resolve().parents[2]

# Builds a System through openmm-ml (mace and e3nn imported, a module scripted, openmm-torch
# imported, a Context made), then loads a pickle that calls a function when unpickled.
_SCRIPT = """
import os, pickle, sys
import torch


class Payload:
    def __reduce__(self):
        return (print, ("UNPICKLED: torch.load ran the file's code",))


from openmmml import MLPotential
import openmm
from tests.plugin.helpers import openmm_state, water_box

system = water_box(1)
omm = MLPotential("mace-lp", modelPath=sys.argv[1], policy="fp32", backend="e3nn").createSystem(
    system.topology, device="cpu")
print("energy", openmm_state(omm, system, "CPU")[0])
print("variable", os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"))
torch.save(Payload(), sys.argv[2])
try:
    torch.load(sys.argv[2])
except pickle.UnpicklingError:
    print("refused")
from openmm_mace_lp.upstream import quiet_profiler
quiet_profiler()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
    torch.ones(3).sum()
"""

HARMLESS = ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected", "instance-level annotations", "simtk.openmm",
            "gpuGetDeviceCount")


def test_using_the_plugin_leaves_torch_load_strict_and_quiet(tmp_path, tmp_path_factory):
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "KINETO_LOG_LEVEL")}
    environment.update(OPENMM_MACE_LP_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")  # a fresh export
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(model_file(tmp_path_factory.getbasetemp())),
                           str(tmp_path / "untrusted.pt")], capture_output=True, text=True, cwd=ROOT,
                          env=environment, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "variable None" in done.stdout and "refused" in done.stdout, done.stdout
    assert "UNPICKLED" not in done.stdout
    assert np.isfinite(float(done.stdout.split("energy")[1].split()[0]))
    for message in HARMLESS:
        assert message not in done.stderr, done.stderr


def test_dcd_plugin_lines_are_dropped_and_everything_else_kept(tmp_path, capfd):
    import mdtraj as md

    topology = md.Topology()
    residue = topology.add_residue("HOH", topology.add_chain())
    topology.add_atom("O", md.element.oxygen, residue)
    path = str(tmp_path / "one.dcd")
    md.Trajectory(np.zeros((2, 1, 3)), topology).save_dcd(path)
    md.load_dcd(path, top=topology)
    assert "dcdplugin) " in capfd.readouterr().out  # what MDTraj's C reader prints
    with without_dcd_plugin_lines():
        print("before", flush=True)
        frames = md.load_dcd(path, top=topology)
        os.write(1, b"dcdplugin-like but ours\npartial line")
    out = capfd.readouterr().out
    assert frames.n_frames == 2
    assert "dcdplugin) " not in out
    assert "before\n" in out and "dcdplugin-like but ours\n" in out and out.endswith("partial line")


def test_dcd_filter_ends_while_a_child_process_holds_its_pipe(capfd):
    # Dask starts multiprocessing's resource tracker inside `mace-lp campaign`; it inherits the
    # filter's pipe and lives until the command exits: the filter must not wait for it.
    started = time.monotonic()
    with without_dcd_plugin_lines():
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print("ours", flush=True)
    elapsed = time.monotonic() - started
    child.kill()
    child.wait()
    assert elapsed < 20.0, f"the filter waited {elapsed:.0f} s for a child's end"
    assert "ours\n" in capfd.readouterr().out
