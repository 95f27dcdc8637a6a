"""What a precision policy does to the barostat: energy changes of its volume moves against fp64.

OpenMM's MonteCarloBarostat never looks at forces: it scales the box and the molecules' centres
(each water moved rigidly), asks the model for the energy of the scaled configuration and
accepts or rejects on the energy *difference*. A policy whose forces are accurate can still
shift the NPT density if its energy differences are biased (a pressure error the barostat
responds to) or noisy (a random error in every acceptance test). The precision study
(``precision_study_2026-12-01_h200.md``) found bf16's density 1.5 % below fp64's; this script
measures both channels for every policy on committed frames, through the same TorchScript
module OpenMM runs (``openmm_mace_lp.evaluate``; on the CPU the low-precision arithmetic is
emulated exactly, up to summation order):

* ``dE error (kT)``: for each frame and volume change dV/V = +-d, the policy's
  E(scaled) - E(frame) minus fp64's, in kT at ``--temperature``: what enters the acceptance
  test besides the physics (mean: systematic; SD: noise);
* ``pressure error (bar)``: the barostat's pressure from central differences of the policy's
  energies, -(E(+d) - E(-d)) / (2 d V), minus fp64's, per frame (mean +- SEM). With water's
  compressibility (4.5e-5 /bar) a pressure error dP moves the density by about -4.5e-5 dP.

    python benchmarks/barostat_precision.py --policies fp64,fp32,tf32,bf16,fp16 \\
        -o benchmarks/results/barostat_precision_2026-12-01_cpu.json

Where in the model bf16's error arises: ``--bf16-layers`` adds one row per variant, the fp32
policy with bf16 GEMMs in one kind of layer only (``LAYER_KINDS``; ``a+b`` joins kinds in one
variant), e.g. ``bf16[radial_mlp]``. With the e3nn backend the policy's GEMMs are the only place
bf16 enters, so a variant of every kind is the bf16 policy itself:

    python benchmarks/barostat_precision.py --policies fp64,bf16 \\
        --bf16-layers radial_mlp,linear,node_embedding,linear_up,interaction_linear,product_linear,readout \\
        -o benchmarks/results/barostat_precision_layers_2026-12-02_cpu.json

Frames: the teacher's liquid (``md_periodic``) of the valid and test splits of the embedded
model's data set, 216 waters each (consecutive O, H, H; refused otherwise).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from energy_bias import BAR_PER_EV_A3, offsets_from_molecule_centres  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "systems" / "data"
KJ_PER_MOL_PER_EV = 96.48533212
BOLTZMANN_KJ_PER_MOL_K = 0.0083144626
WATER_COMPRESSIBILITY_PER_BAR = 4.5e-5  # liquid water, 300 K
# --bf16-layers: kind -> (class of the policy layer, pattern its module name in the prepared
# model matches). "linear" is every equivariant linear layer; the kinds after it split those by
# where they sit in MACE (together they are "linear", which ``bf16_layers_model`` checks).
LAYER_KINDS = {
    "radial_mlp": ("RadialMLP", r".*"),  # interactions.i.conv_tp_weights
    "linear": ("IrrepsLinear", r".*"),
    "node_embedding": ("IrrepsLinear", r"node_embedding\..*"),
    "linear_up": ("IrrepsLinear", r"interactions\.\d+\.linear_up"),
    "interaction_linear": ("IrrepsLinear", r"interactions\.\d+\.linear"),  # after the message
    "product_linear": ("IrrepsLinear", r"products\.\d+\.linear"),
    "readout": ("IrrepsLinear", r"readouts\..*"),
}
SPLIT_LINEAR_KINDS = ("node_embedding", "linear_up", "interaction_linear", "product_linear", "readout")


def liquid_frames(splits: list[str], prefix: str, max_frames: int) -> list:
    """The md_periodic frames of the given splits (ASE Atoms), at most ``max_frames``."""
    from ase.io import read

    frames = []
    for split in splits:
        path = DATA / f"{prefix}_{split}.extxyz.xz"
        frames += [a for a in read(path, index=":") if a.info.get("config_type") == "md_periodic"]
    if not frames:
        raise ValueError(f"no md_periodic frames in splits {splits} of {prefix}: check --splits/--prefix")
    return frames[:max_frames]


def molecular_scaling(atoms, volume_change: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions and cell (A) after the barostat's move: box and molecular centres scaled so that
    the volume changes by the factor 1 + volume_change, each water moved rigidly."""
    offsets = offsets_from_molecule_centres(atoms.positions, atoms.cell.array, atoms.get_chemical_symbols())
    centres = atoms.positions - offsets  # each atom's water centre (the water made whole)
    scale = (1.0 + volume_change) ** (1.0 / 3.0)
    return centres * scale + offsets, atoms.cell.array * scale


def configurations(atoms, volume_changes: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The frame and its scaled copies: positions [k, n, 3] and boxes [k, 3, 3] in nm."""
    positions, boxes = [atoms.positions], [atoms.cell.array]
    for change in volume_changes:
        p, b = molecular_scaling(atoms, change)
        positions.append(p)
        boxes.append(b)
    return np.asarray(positions) / 10.0, np.asarray(boxes) / 10.0


def parse_bf16_layers(text: str) -> list[tuple[str, ...]]:
    """``--bf16-layers``: comma-separated variants, each a kind of ``LAYER_KINDS`` or kinds joined by '+'."""
    variants = []
    for item in (v.strip() for v in text.split(",")):
        kinds = tuple(k.strip() for k in item.split("+")) if item else ()
        unknown = [k for k in kinds if k not in LAYER_KINDS]
        if unknown:
            raise ValueError(f"unknown layer kind(s) {', '.join(map(repr, unknown))} in --bf16-layers; "
                             f"valid kinds: {', '.join(LAYER_KINDS)} (join kinds with '+')")
        if kinds:
            variants.append(kinds)
    return variants


def variant_name(kinds: tuple[str, ...]) -> str:
    return f"bf16[{'+'.join(kinds)}]"


def layers_of_kinds(prepared, kinds) -> list[str]:
    """Names, in model order, of the policy layers of a prepared model that are of any of ``kinds``."""
    return [name for name, module in prepared.named_modules()
            if any(type(module).__name__ == LAYER_KINDS[k][0] and re.fullmatch(LAYER_KINDS[k][1], name) for k in kinds)]


def bf16_layers_model(model, kinds: tuple[str, ...], backend: str = "e3nn"):
    """The fp32-prepared model (``export.prepare_model``) with bf16 GEMMs in the layers of
    ``kinds`` only: each of their ``PolicyDense`` replaced by ``PolicyDense(weight, MATMUL_BF16,
    float32)`` (the fp32 one holds the unrounded weight, so the bf16 weight is the bf16 policy's).
    Returns the model and {bf16 layer: its GEMMs}."""
    import torch

    from openmm_mace_lp.export import prepare_model
    from openmm_mace_lp.linears import PolicyDense
    from openmm_mace_lp.policy import MATMUL_BF16, MATMUL_NATIVE, get_policy

    prepared, _ = prepare_model(model, get_policy("fp32"), backend)
    linear, split = layers_of_kinds(prepared, ["linear"]), [layers_of_kinds(prepared, [k]) for k in SPLIT_LINEAR_KINDS]
    if sorted(linear) != sorted(sum(split, [])):  # each linear layer in exactly one of the split kinds
        raise RuntimeError(f"the linear layers {linear} are not split one to one by {SPLIT_LINEAR_KINDS}: "
                           f"{dict(zip(SPLIT_LINEAR_KINDS, split))}")
    missing = [k for k in kinds if not layers_of_kinds(prepared, [k])]
    if missing:
        raise ValueError(f"the model has no layers of kind(s) {', '.join(missing)}")
    gemms = {}
    for name in layers_of_kinds(prepared, kinds):
        gemms[name] = 0
        for parent in list(prepared.get_submodule(name).modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, PolicyDense):
                    assert child.mode == MATMUL_NATIVE and child.weight.dtype == torch.float32
                    setattr(parent, child_name, PolicyDense(child.weight, MATMUL_BF16, torch.float32))
                    gemms[name] += 1
    return prepared, gemms


def bf16_layers_module(model, kinds: tuple[str, ...], backend: str, atomic_numbers: list[int]):
    """``bf16_layers_model`` as the scripted periodic MACEForce (interaction energy) that
    ``export.build_force_module`` makes of a policy's model; and {bf16 layer: its GEMMs}."""
    import torch

    from openmm_mace_lp.export import MACEForce, check_elements, script_module

    prepared, gemms = bf16_layers_model(model, kinds, backend)
    node_attrs = torch.nn.functional.one_hot(torch.tensor(check_elements(model, atomic_numbers)),
                                             num_classes=len(model.atomic_numbers))
    force = MACEForce(prepared, node_attrs, None, len(atomic_numbers), True, torch.float32, "interaction_energy")
    return script_module(force), gemms


def energies_by_policy(frames: list, policies: list[str], volume_changes: list[float], backend: str,
                       bf16_layers: list[tuple[str, ...]] = ()) -> tuple[dict, dict]:
    """kJ/mol energies [frame, 1 + len(volume_changes)] of every policy, then of every
    ``--bf16-layers`` variant; and each variant's {bf16 layer: its GEMMs}."""
    import torch

    from openmm_mace_lp.evaluate import evaluate_frames
    from openmm_mace_lp.model_files import default_model_path, load_mace_model

    moved = [configurations(atoms, volume_changes) for atoms in frames]  # the same for every policy
    out = {}
    for policy in policies:
        out[policy] = np.asarray([
            evaluate_frames(None, policy, backend, atoms.numbers.tolist(), positions, boxes)[0]
            for atoms, (positions, boxes) in zip(frames, moved)], dtype=float)
    layers = {}
    if bf16_layers:
        numbers = frames[0].numbers.tolist()
        if any(atoms.numbers.tolist() != numbers for atoms in frames):
            raise ValueError("--bf16-layers builds one module for all frames: they must hold the same atoms")
        model = load_mace_model(default_model_path())
    for kinds in bf16_layers:
        module, layers[variant_name(kinds)] = bf16_layers_module(model, kinds, backend, numbers)
        out[variant_name(kinds)] = np.asarray([[float(module(torch.from_numpy(p), torch.from_numpy(b))[0])
                                                for p, b in zip(positions, boxes)] for positions, boxes in moved])
    return out, layers


def variance_shares(rows: list[dict], layers: dict, whole: str = "bf16") -> None:
    """Mark each variant row with its bf16 layers and, where the ``whole`` policy has a row, the
    share of its error variances (dE error SD^2, energy error SD^2) the variant carries."""
    whole_row = next((r for r in rows if r["policy"] == whole), None)
    for row in rows:
        if row["policy"] not in layers:
            continue
        row["bf16_layers"] = layers[row["policy"]]
        if whole_row is not None:
            for share, key in (("dE_variance_share", "dE_error_sd_kT"),
                               ("energy_variance_share", "energy_error_sd_kJ_mol")):
                row[share] = float((row[key] / whole_row[key]) ** 2)


def summarise(energies: dict, frames: list, step: float, temperature_K: float,
              reference: str = "fp64") -> list[dict]:
    """Per policy: dE errors in kT (mean, SD, max) for the moves +-step, and the pressure error."""
    kT = BOLTZMANN_KJ_PER_MOL_K * temperature_K
    volumes = np.array([a.get_volume() for a in frames])  # A^3
    ref = energies[reference]
    rows = []
    for policy, e in energies.items():
        if policy == reference:
            continue
        moves = (e[:, 1:] - e[:, :1]) - (ref[:, 1:] - ref[:, :1])  # kJ/mol, [frame, move]
        # central difference over the moves +step (column 1) and -step (column 2)
        d_energy = (e[:, 1] - e[:, 2]) - (ref[:, 1] - ref[:, 2])  # kJ/mol
        d_pressure = -d_energy / KJ_PER_MOL_PER_EV / (2.0 * step * volumes) * BAR_PER_EV_A3
        sem = float(d_pressure.std(ddof=1) / np.sqrt(len(d_pressure))) if len(d_pressure) > 1 else float("nan")
        rows.append(dict(policy=policy, frames=len(frames),
                         dE_error_mean_kT=float(moves.mean() / kT), dE_error_sd_kT=float(moves.std(ddof=1) / kT),
                         dE_error_max_kT=float(np.abs(moves).max() / kT),
                         energy_error_sd_kJ_mol=float((e[:, 0] - ref[:, 0]).std(ddof=1)),
                         pressure_error_bar=float(d_pressure.mean()), pressure_error_sem_bar=sem,
                         implied_density_change_percent=float(-100 * WATER_COMPRESSIBILITY_PER_BAR * d_pressure.mean())))
    return rows


def markdown(record: dict) -> str:
    lines = [f"# Precision and the barostat's volume moves ({record['card']}, {record['date']})", "",
             f"Embedded model (SHA-256 {record['model_sha256'][:8]}), backend `{record['backend']}`, "
             f"{record['frames']} teacher liquid frames ({record['atoms']} atoms, splits {record['splits']}); "
             f"molecular-centre volume moves dV/V = +-{record['step']} (waters rigid, as OpenMM's "
             f"MonteCarloBarostat does); kT at {record['temperature_K']} K. Policy minus fp64.", "",
             "| policy | dE error mean (kT) | dE error SD (kT) | dE error max (kT) | energy error SD (kJ/mol) "
             "| barostat pressure error (bar, mean +- SEM) | implied density change (%) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in record["rows"]:
        lines.append(f"| {r['policy']} | {r['dE_error_mean_kT']:+.3g} | {r['dE_error_sd_kT']:.3g} | "
                     f"{r['dE_error_max_kT']:.3g} | {r['energy_error_sd_kJ_mol']:.3g} | "
                     f"{r['pressure_error_bar']:+.1f} +- {r['pressure_error_sem_bar']:.1f} | "
                     f"{r['implied_density_change_percent']:+.2f} |")
    lines += ["", "Implied density change: -4.5e-5 /bar x the pressure error (water's compressibility).", ""]
    variants = [r for r in record["rows"] if "bf16_layers" in r]
    if variants:
        lines += ["`bf16[kinds]`: the fp32 policy with bf16 GEMMs (the bf16 policy's arithmetic) in those layers "
                  "only, everything else fp32. Variance share: the variant's error SD^2 over the bf16 policy's "
                  "(1: that kind alone makes as much noise as bf16 in every layer).", "",
                  "| variant | bf16 layers (GEMMs) | dE error variance share | energy error variance share |",
                  "| --- | --- | --- | --- |"]
        for r in variants:
            names = ", ".join(f"`{name}` ({n})" for name, n in r["bf16_layers"].items())
            shares = [f"{r[k]:.3g}" if k in r else "-" for k in ("dE_variance_share", "energy_variance_share")]
            lines.append(f"| {r['policy']} | {names} | {shares[0]} | {shares[1]} |")
        lines.append("")
    if record.get("note"):
        lines += [record["note"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policies", default="fp64,fp32,tf32,bf16,fp16")
    parser.add_argument("--backend", default="e3nn")
    parser.add_argument("--splits", default="valid,test")
    parser.add_argument("--prefix", default="water_amoeba")
    parser.add_argument("--max-frames", type=int, default=12)
    parser.add_argument("--step", type=float, default=0.003, help="volume move dV/V (0.003)")
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--bf16-layers", default="",
                        help=f"comma-separated variants, bf16 in these layers only (kinds: {', '.join(LAYER_KINDS)}; "
                             "join kinds with '+'), one more row each")
    parser.add_argument("--note", default="", help="a line for the record (e.g. why fewer frames)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSON path (a .md is written beside it)")
    args = parser.parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    try:
        bf16_layers = parse_bf16_layers(args.bf16_layers)
    except ValueError as error:
        parser.error(str(error))
    if "fp64" not in policies or len(policies) + len(bf16_layers) < 2:
        parser.error("--policies needs fp64 (the reference) and at least one other policy or --bf16-layers variant")
    if not 0 < args.step < 0.1:
        parser.error("--step is a volume fraction between 0 and 0.1, e.g. 0.003")
    if bf16_layers and args.backend != "e3nn":
        parser.error("--bf16-layers needs --backend e3nn (there the policy's GEMMs are the only place bf16 enters)")
    from openmm_mace_lp.model_files import default_model_path, sha256_of

    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    frames = liquid_frames(splits, args.prefix, args.max_frames)
    start = time.perf_counter()
    energies, layers = energies_by_policy(frames, policies, [args.step, -args.step], args.backend, bf16_layers)
    seconds = time.perf_counter() - start
    rows = summarise(energies, frames, args.step, args.temperature)
    variance_shares(rows, layers)
    record = dict(card="cpu", date=date.today().isoformat(), model_sha256=sha256_of(default_model_path()),
                  backend=args.backend, splits=",".join(splits), frames=len(frames), atoms=len(frames[0]),
                  step=args.step, temperature_K=args.temperature, evaluation_seconds=round(seconds, 1),
                  note=args.note, rows=rows, energies_kJ_mol={p: e.tolist() for p, e in energies.items()})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=1))
    args.output.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
