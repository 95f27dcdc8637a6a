"""Write the small ready-made structure files in ``systems/structures/``.

    python -m openmm_mace_lp.systems.recipes.make_structures [--out systems/structures]

Every file is the output of a builder in :mod:`openmm_mace_lp.systems.builders` with a
fixed seed (PDB precision: 0.001 A), so the tests can rebuild and compare them:

=============================  =========  ================================================
file                           atoms      recipe
=============================  =========  ================================================
water_64.pdb                   192        ``water_box(64, 1.0, seed=0)``
water_343.pdb                  1029       ``water_box(343, 1.0, seed=0)``
water_1000.pdb                 3000       ``water_box(1000, 1.0, seed=0)``
methanol.pdb                   6          ``organic_molecule("methanol")`` (ASE g2 geometry)
methanol_liquid_128.pdb        768        ``methanol_liquid(128, 0.7866, seed=0)``
alanine_dipeptide.pdb          22         ``organic_molecule("alanine_dipeptide")`` minimised
                                          with Amber ff14SB in vacuum (OpenMM Reference
                                          platform, tolerance 0.1 kJ/mol/nm)
=============================  =========  ================================================

The water boxes are clash-free lattice packings (no intermolecular contact under 2 A), not
equilibrated liquids: minimise and equilibrate before production. Larger boxes (about
10000 and 30000 atoms) are not committed; ``builders.load_water_box(n_atoms)`` builds and
caches them on demand.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from openmm_mace_lp.atomic import atomic_write_text
from openmm_mace_lp.systems import builders as B

OUT = Path(__file__).resolve().parent.parent / "structures"


def _pdb_text(structure: B.Structure, remarks: list[str]) -> str:
    from openmm.app import PDBFile
    from openmm.unit import nanometer

    buf = io.StringIO()
    PDBFile.writeFile(structure.topology, structure.positions * nanometer, buf, keepIds=False)
    head = "".join(f"REMARK   1 {r[:69]}\n" for r in remarks)
    # drop OpenMM's "CREATED WITH OPENMM <version>, <date>" so that reruns are byte-identical
    body = "".join(l for l in buf.getvalue().splitlines(keepends=True) if "CREATED WITH" not in l)
    return head + body


def _write(path: Path, text: str) -> None:
    atomic_write_text(path, text)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def minimised_alanine_dipeptide() -> B.Structure:
    import openmm as mm
    import openmm.app as app
    import openmm.unit as u

    s = B.organic_molecule("alanine_dipeptide")
    ff = app.ForceField("amber14/protein.ff14SB.xml")
    system = ff.createSystem(s.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(s.positions * u.nanometer)
    mm.LocalEnergyMinimizer.minimize(ctx, 0.1, 0)
    pos = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
    return B.Structure(s.topology, np.asarray(pos), None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    tag = "make_structures.py"
    for n, fname in B.READY_WATER_BOXES.items():
        s = B.water_box(n, 1.0, seed=0)
        _write(a.out / fname, _pdb_text(s, [f"{tag}: water_box({n}, 1.0 g/cm3, seed=0)",
                                            "lattice packing, not equilibrated"]))
    _write(a.out / "methanol.pdb", _pdb_text(B.organic_molecule("methanol"),
                                             [f"{tag}: organic_molecule('methanol')"]))
    _write(a.out / "methanol_liquid_128.pdb", _pdb_text(
        B.methanol_liquid(128, 0.7866, seed=0),
        [f"{tag}: methanol_liquid(128, 0.7866 g/cm3, seed=0)", "lattice packing, not equilibrated"]))
    _write(a.out / "alanine_dipeptide.pdb", _pdb_text(
        minimised_alanine_dipeptide(),
        [f"{tag}: organic_molecule('alanine_dipeptide')", "ACE-ALA-NME minimised with Amber ff14SB in vacuum"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
