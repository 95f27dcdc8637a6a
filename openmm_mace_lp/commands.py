"""Sub-commands of the plug-in itself: ``mace-lp policies`` and ``mace-lp export``."""
from __future__ import annotations

import argparse
from pathlib import Path

from .backend import BACKENDS
from .compiled import COMPILERS, INDUCTOR, TORCHSCRIPT
from .linears import TF32_EMULATED, TF32_NATIVE
from .policy import DEFAULT_POLICY, POLICIES, describe_policies


def register(subparsers: argparse._SubParsersAction) -> None:
    policies = subparsers.add_parser("policies", help="the precision policies and what each changes "
                                                      "(the README's table)")
    policies.set_defaults(func=_policies)

    export = subparsers.add_parser(
        "export",
        help="write the TorchScript module for a system (usable with plain openmm-torch)",
        description="Export MODEL for the atoms of TOPOLOGY as a TorchScript file: positions and box "
        "(nm) in, energy (kJ/mol) and forces (kJ/mol/nm) out; use it with "
        "openmmtorch.TorchForce(path) and force.setOutputsForces(True).",
    )
    export.add_argument("model", help="MACE .model file, or 'default' for the embedded water model")
    export.add_argument("--topology", required=True, help="PDB (or PDBx) file whose atoms the module is for")
    export.add_argument("--policy", default=DEFAULT_POLICY, choices=list(POLICIES))
    export.add_argument("--backend", default="auto", choices=list(BACKENDS))
    export.add_argument("--device", default="cpu", help="device the module is built for (cpu, cuda)")
    export.add_argument("--energy", default="interaction_energy", choices=["interaction_energy", "energy"],
                        help="interaction energy (openmm-ml's default) or total energy with E0s")
    export.add_argument("--fixed-capacity", action="store_true",
                        help="fixed-capacity neighbour list sized from the file's positions, for "
                             "TorchForce(path, {'useCUDAGraphs': 'true'}) (if ever exceeded: +inf "
                             "energy, NaN forces)")
    export.add_argument("--margin", type=float, default=None,
                        help="spare edge capacity with --fixed-capacity, a fraction (default 0.1)")
    export.add_argument("--neighbor-list", default="torchscript", choices=["torchscript", "native"],
                        help="with --fixed-capacity: the TorchScript list (default: the file runs in plain "
                             "openmm-torch) or this package's native operators (the list, and TF32 tensor cores for "
                             "--policy tf32 on CUDA; the process must load openmm_mace_lp.native.library_paths() "
                             "first)")
    export.add_argument("--compiler", default=TORCHSCRIPT, choices=list(COMPILERS),
                        help="with --fixed-capacity and --backend e3nn: inductor compiles energy and forces "
                             "ahead of time (AOTInductor, for --device); the process must import openmm_mace_lp "
                             "(its native library runs the compiled code)")
    export.add_argument("-o", "--output", required=True, help="output .pt file")
    export.set_defaults(func=_export)


def _policies(args: argparse.Namespace) -> int:
    print(describe_policies())
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_to_file, read_metadata
    from .model_files import check_model_path, default_model_path
    from .potential import check_cuda, neighbor_capacity

    model = default_model_path() if args.model == "default" else Path(args.model)
    structure = read_structure(args.topology)
    check_model_path(model)
    topology = structure.topology
    check_cuda(args.device)
    if args.margin is not None and not args.fixed_capacity:
        raise ValueError("--margin sizes the fixed-capacity neighbour list; add --fixed-capacity.")
    if args.neighbor_list == "native" and not args.fixed_capacity:
        raise ValueError("--neighbor-list native is the fixed-capacity list's operator; add --fixed-capacity.")
    if args.compiler == INDUCTOR and not args.fixed_capacity:
        raise ValueError("--compiler inductor compiles for fixed shapes; add --fixed-capacity.")
    from .potential import check_margin

    check_margin(args.margin)
    output = Path(args.output)
    if output.is_dir():
        raise ValueError(f"-o {output} is a directory; give the path of the .pt file to write.")
    if output.parent.exists() and not output.parent.is_dir():
        raise ValueError(f"-o {output}: {output.parent} is a file, not a directory.")
    capacity = None
    if args.fixed_capacity:
        capacity = neighbor_capacity(model, topology, None, None, structure.positions, args.margin)
    atomic_numbers = [atom.element.atomic_number for atom in topology.atoms()]
    path = export_to_file(
        model, args.policy, args.backend, atomic_numbers, output=args.output,
        periodic=topology.getPeriodicBoxVectors() is not None, device=args.device, energy_type=args.energy,
        capacity=capacity, neighbor_list=args.neighbor_list if capacity is not None else None,
        compiler=args.compiler,
        # A file for plain openmm-torch uses no native operator unless --neighbor-list native
        # asks for them: then the tf32 policy's GEMMs are native on CUDA too.
        tf32_impl=TF32_NATIVE if args.neighbor_list == "native" and capacity is not None else TF32_EMULATED,
    )
    meta = read_metadata(path)
    fixed = meta.get("neighbor_capacity")
    print(f"wrote {path}: {len(atomic_numbers)} atoms, policy {meta['policy']}, backend {meta['backend']}, "
          f"{'periodic' if meta['periodic'] else 'non-periodic'}, cutoff {meta['cutoff_angstrom']} A, "
          f"compiler {meta.get('compiler', 'torchscript')}"
          + (f", fixed capacity {fixed['edge_capacity']} edges (CUDA-graph capturable)" if fixed else ""))
    return 0


def read_structure(path: str):
    """An OpenMM PDBFile/PDBxFile (topology and positions), with a clear error otherwise."""
    from openmm.app import PDBFile, PDBxFile

    if not Path(path).is_file():
        raise FileNotFoundError(f"Topology file {path} does not exist.")
    reader = PDBxFile if path.lower().endswith((".cif", ".pdbx")) else PDBFile
    try:
        return reader(path)
    except Exception as error:  # noqa: BLE001 - the readers raise many types
        raise ValueError(f"Cannot read {path} as {reader.__name__} ({error}); pass a PDB or PDBx file.") from None
