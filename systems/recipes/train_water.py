"""Train a MACE water model on one teacher's data set in ``systems/data``.

    python -m openmm_mace_lp.systems.recipes.train_water                      # AMOEBA (default), GPU node
    python -m openmm_mace_lp.systems.recipes.train_water --teacher gfn2-xtb   # the GFN2-xTB model
    python -m openmm_mace_lp.systems.recipes.train_water --smoke              # CPU, tiny, proves the command
    python -m openmm_mace_lp.systems.recipes.train_water --print-command

Each teacher has a :class:`Target`: its data prefix (``water_amoeba``, ``water_gfn2``), the
model's name (``mace-water-amoeba``, ``mace-water-gfn2``) and its hyper-parameters.

What it does:

1. runs mace-torch's own trainer (``python -m mace.cli.run_train``) with the arguments of
   :func:`mace_arguments` in ``--work-dir`` (default ``build/mace_water``);
2. copies the final (stage-two, EMA) model to ``systems/models/<model>.model``
   (atomically), saved for the CPU;
3. evaluates it in float64 on the held-out *test* split (whole trajectories never seen in
   training or validation) and writes ``systems/models/<model>.test_errors.json``
   (force RMSE meV/A, energy RMSE meV/atom, stress RMSE meV/A^3, overall and per
   config_type);
4. writes the model card ``systems/models/<model>.md`` from the data manifest, the
   hyper-parameters and the measured errors (``--card-only --closed-loop FILE`` adds the
   closed-loop NPT comparison against the teacher).

The AMOEBA model (the embedded default) and why its size: see :data:`AMOEBA_HYPERPARAMETERS`.

The GFN2-xTB model's architecture and why (kept as a teacher option; its model is no
longer shipped):

* two interactions, hidden ``64x0e+64x1o`` (L = 1), ``max_ell`` 3, correlation 3, 8 Bessel
  radial functions (polynomial envelope p = 5), radial MLP [64, 64, 64]: the MACE-OFF
  layout at half the channels of MACE-OFF24(M), small enough to train in minutes and run MD
  fast, large enough for one-element-pair chemistry like water.
* ``r_max`` 5.0 A rather than 6.0: at 1 g/cm^3 a 5 A sphere holds ~52 neighbours versus ~90
  at 6 A, so 1.7x fewer edges (edge tensors dominate MACE's time and memory, FACTS.md); two
  interactions still see 10 A; the first two hydration shells (O-O 2.8 and ~4.5 A) are
  inside one cutoff; MACE-OFF23 used 5 A.  It also stays near half the edge of the smallest
  training box (32 waters at 1.1 g/cm^3: 9.55 A).
* float64 training: mace's recommended setting; total energies are ~-46 eV/atom while the
  target error is 1.5 meV/atom, and a model this small is launch-bound on an H100, so
  float64 costs little time.  (The model is converted to other precisions at export.)
* ``config_type_weights`` 0.1 for the randomly displaced frames, whose forces are ~3x
  larger (RMS 3.3 vs 1.0-1.2 eV/A), and for the close-contact dimers (``close_contacts.py``,
  interaction energies up to 12 eV), so that they teach the repulsive walls without taking
  most of the squared-error loss.
* loss ``stress`` (energy per atom, forces, stress of the periodic frames; clusters carry no
  stress and get weight 0): energy 1 / forces 100 / stress 30000, then stage two (from epoch
  10 of 26, lr 1e-3) energy 1000 / forces 10 / stress 30000.  Stress (the E(V) slope) is what
  a barostat samples.  Why forces 10 in stage two: with forces at 100 model 6019ec71
  ended at a 5.3 meV/atom energy RMSE (target 1.5), its error mostly a bias that depends on
  the environment (dense boxes -2.6, expanded boxes -5.0, small clusters -6.4 meV/atom),
  which made low densities too stable; at 5 meV/atom and 48 meV/A the energy term weighed
  ~1/9 of the force term, at forces 10 about as much.  Why 30000: mace averages the stress
  term over *all* frames of a batch, clusters included, so only ~1/4 of it is live, and
  stress errors are small numbers in eV/A^3: at weight 1000 a 3 meV/A^3 (0.5 GPa) stress error weighed ~1/30 of a 40 meV/A force
  error, and the first model (20 epochs) came out with a stress RMSE of 3.25 meV/A^3 and a
  virial pressure ~0.8 GPa too high at 1 g/cm^3.  Side by side on an H200 (30 epochs, the
  first data set) stress weight 3e4 gave a test stress RMSE of 0.83 meV/A^3 with forces
  49.6 meV/A, 1e5 gave 0.71 with 54.9 meV/A: 3e4 keeps the force target.
* E0s: the GFN2-xTB isolated atoms (H doublet, O triplet) that lead the train file
  (``--E0s isolated``), so the model predicts atomisation-referenced energies that match
  GFN2-xTB totals.
* EMA 0.99, AMSGrad Adam lr 0.01, batch 16, seed 20261127, float64, no downloads (no
  foundation model, no wandb; ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` set anyway).

Epoch budget, measured on an H200 (2026-11-27) with a stand-in train set of the final size
(1376 frames, 80k atoms: 388 periodic frames of 96/192 atoms, 988 clusters), this
architecture and validation every epoch: batch 8 -> 19 s/epoch, batch 16 -> 11 s/epoch,
batch 32 -> 7.2 s/epoch (float64); float32 at batch 8 was no faster (20.5 s: the small
model is launch-bound), ``--enable_cueq=True`` no faster either (12 s/epoch at batch 16,
plus ~40 s of first-epoch compilation), ``num_workers`` 4 no faster.  Start-up (reading and
graphing the data) ~40 s, final error tables + float64 test evaluation < 1 min.  Hence batch
16 with validation every 2 epochs.  With the larger final set (1635 frames) one training alone
on an H200 ran at ~8 s/epoch in float64 (two sharing the card: ~16 s/epoch each), so the
default 24 epochs (~2400 optimiser steps) take ~4.5 min.  Raise ``--epochs`` for a better
model if time allows.

Stage two starts at 40 % of the epochs (not the usual 75 %): in a trial on a partial data set
(H200, 35 epochs, stage two from 27) the validation energy RMSE fell from 22 to 5 meV/atom
in the 8 stage-two epochs while the force RMSE stayed at ~47 meV/A, so energies need the
longer stage two more than forces need the longer stage one.

Check run on the first data set (H200, ``--epochs 20``, i.e. stage two from epoch 11, 264 s
end to end): test force RMSE 56.3 meV/A (39.0 without the displaced frames), energy RMSE
5.2 meV/atom (md_periodic 3.8, md_cluster 5.4).  That model, and one retrained with stress
weight 3e4, expanded without limit under NPT; the data set now also holds the low-density
and cavity frames of ``low_density.py`` (see there why).  The default run on that set (H200,
24 epochs, stage-two forces 100: 262 s of training) gave test force RMSE 47.9 meV/A, energy
RMSE 5.3 meV/atom, stress RMSE 0.51 meV/A^3, and still expanded.  The shipped model
(SHA-256 6a4d37cf) is this recipe's default run on the set that also holds the close-contact
dimers and the previous model's own NPT frames (``close_contacts.py``, ``model_md.py``; one
H200 of a 2-GPU machine, 26 epochs: 375 s of training, 416 s end to end).  On the test split
without displaced and close-contact frames: forces 44.4 meV/A, energies 4.5 meV/atom (dense
boxes 1.75, clusters 5.5), stress 0.50 meV/A^3; its dimer wall no longer turns over and its
mean pressure error per config type is below 0.03 GPa on the liquid frames.  It expands
under NPT all the same; ``benchmarks/results/npt_2026-11-28_h200_water1029_6a4d37cf.md`` shows why:
GFN2-xTB's own pressure is positive on the boxes the liquid passes through.

GPU-node note: mace prints its error tables with prettytable, which needs ``wcwidth``; the
GPU image lacks it -- add ``wcwidth`` to ``../shared/gpu/gpu-wheels.txt`` (or install the
wheel into /tmp/gpu-site) or the run fails after training.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from openmm_mace_lp.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from openmm_mace_lp.model_files import sha256_of

HERE = Path(__file__).resolve().parent
SYSTEMS = HERE.parent
DATA_DIR = SYSTEMS / "data"
MODELS_DIR = SYSTEMS / "models"
SEED = 20261127
SUBSET_FRAMES = 4  # per-frame errors kept for the CPU test of the shipped model

# The GFN2-xTB model's architecture and schedule (full run).  Keys are mace run_train options.
GFN2_HYPERPARAMETERS = {
    "model": "MACE",
    "num_interactions": 2,
    "hidden_irreps": "64x0e+64x1o",
    "max_ell": 3,
    "correlation": 3,
    "r_max": 5.0,
    "num_radial_basis": 8,
    "num_cutoff_basis": 5,
    "radial_MLP": "[64,64,64]",
    "MLP_irreps": "16x0e",
    "default_dtype": "float64",
    "E0s": "isolated",
    "loss": "stress",
    # displaced frames carry ~3x larger forces (RMS 3.3 vs 1.0-1.2 eV/A), i.e. ~10x the
    # squared-error weight per atom: scale them back so they teach the walls without
    # dominating the fit of the liquid
    "config_type_weights": '{"Default":1.0,"rattled_periodic":0.1,"rattled_cluster":0.1,"close_contact":0.1}',
    "energy_weight": 1.0,
    "forces_weight": 100.0,
    "stress_weight": 30000.0,
    "stage_two": True,
    "start_stage_two": 10,
    "stage_two_energy_weight": 1000.0,
    "stage_two_forces_weight": 10.0,
    "stage_two_stress_weight": 30000.0,
    "stage_two_lr": 1e-3,
    "ema": True,
    "ema_decay": 0.99,
    "amsgrad": True,
    "lr": 0.01,
    "scheduler_patience": 5,
    "batch_size": 16,
    "valid_batch_size": 32,
    "max_num_epochs": 26,
    "eval_interval": 2,
    "error_table": "PerAtomRMSEstressvirials",
    "seed": SEED,
}


# The AMOEBA model (the embedded default).  Why this size: the README's main job runs it on a
# 2-core CPU, where the GFN2 model's 64x0e+64x1o / max_ell 3 layout cost ~1 s per MD step at
# 192 atoms.  Eager mace float32, 192 atoms, one thread, random weights (2026-12-01, this CPU):
# 64x0e+64x1o/L3 1036 ms, 32x0e+32x1o/L3 462 ms, 32x0e+32x1o/L2 202 ms, 64x0e/L3 396 ms,
# 32x0e/L2 85 ms per energy+forces.  32x0e+32x1o with max_ell 2 keeps equivariant (L=1)
# messages, which the polarisable teacher's many-body induction calls for, at 5x less CPU time
# than the GFN2 model; the invariant 32x0e is trained beside it as the cheaper candidate
# (``--set hidden_irreps=32x0e``), and the model card records which one met the targets.
# r_max 5 A (two shells, 10 A receptive field), correlation 3, float64 training.  Loss and
# weights as for GFN2 (energy per atom, forces, stress of the periodic frames), with no
# isolated atoms: AMOEBA's monomer at its minimum is ~0 eV, so E0s are explicit zeros
# (``water_amoeba_e0s.json``) and the model's energy is the teacher's total energy.
AMOEBA_HYPERPARAMETERS = {
    **GFN2_HYPERPARAMETERS,
    "hidden_irreps": "32x0e+32x1o",
    "max_ell": 2,
    "correlation": 3,
    "r_max": 5.0,
    "radial_MLP": "[64,64,64]",
    "E0s": "{1:0.0,8:0.0}",
    "config_type_weights": '{"Default":1.0,"rattled_periodic":0.1,"rattled_cluster":0.1,"close_contact":0.1}',
    "batch_size": 8,
    "max_num_epochs": 40,
    "start_stage_two": 16,
    "eval_interval": 2,
}


@dataclass(frozen=True)
class Target:
    """What one teacher's training produces: data prefix, model name, hyper-parameters."""

    teacher: str
    prefix: str
    model_name: str
    hyperparameters: dict


TARGETS = {
    "amoeba": Target("amoeba", "water_amoeba", "mace-water-amoeba", AMOEBA_HYPERPARAMETERS),
    "gfn2-xtb": Target("gfn2-xtb", "water_gfn2", "mace-water-gfn2", GFN2_HYPERPARAMETERS),
}
DEFAULT_TARGET = TARGETS["amoeba"]
# The default target's names (the embedded model).
MODEL_NAME = DEFAULT_TARGET.model_name
PREFIX = DEFAULT_TARGET.prefix
HYPERPARAMETERS = DEFAULT_TARGET.hyperparameters

# CPU smoke test: same command, tiny model and budget.
SMOKE_OVERRIDES = {
    "hidden_irreps": "8x0e+8x1o",
    "max_ell": 2,
    "correlation": 2,
    "radial_MLP": "[16,16]",
    "max_num_epochs": 1,
    "start_stage_two": 1,
    "stage_two": False,
    "batch_size": 2,
    "valid_batch_size": 4,
    "eval_interval": 1,
}


def mace_arguments(data_dir: Path, work_dir: Path, device: str, hp: dict,
                   target: Target = DEFAULT_TARGET) -> list[str]:
    """mace run_train arguments.  The training files are the *decompressed* copies that
    :func:`decompress_data` writes to ``<work_dir>/data`` (ase reads .xz extxyz in time
    quadratic in the file size: minutes instead of a second)."""
    plain = work_dir / "data"
    prefix = target.prefix
    args = [
        f"--name={target.model_name}",
        f"--train_file={plain / f'{prefix}_train.extxyz'}",
        f"--valid_file={plain / f'{prefix}_valid.extxyz'}",
        f"--test_file={plain / f'{prefix}_test.extxyz'}",
        "--energy_key=REF_energy",
        "--forces_key=REF_forces",
        "--stress_key=REF_stress",
        "--compute_stress=True",
        f"--work_dir={work_dir}",
        f"--model_dir={work_dir}",
        f"--log_dir={work_dir / 'logs'}",
        f"--checkpoints_dir={work_dir / 'checkpoints'}",
        f"--results_dir={work_dir / 'results'}",
        f"--device={device}",
        "--save_cpu",
        "--restart_latest",
        "--plot=False",
    ]
    flags = _store_true_options()
    for k, v in hp.items():
        if isinstance(v, bool) and k in flags:
            if v:
                args.append(f"--{k}")
        else:
            args.append(f"--{k}={v}")
    return args


def _store_true_options() -> set[str]:
    """mace options that are bare flags (store_true); the others take a value."""
    try:
        import mace  # noqa: F401
        from mace.tools import build_default_arg_parser

        import argparse as _ap

        return {o.lstrip("-") for a in build_default_arg_parser()._actions
                if isinstance(a, _ap._StoreTrueAction) for o in a.option_strings}
    except Exception:  # mace missing: the flags used by HYPERPARAMETERS
        return {"stage_two", "swa", "ema", "amsgrad", "save_cpu", "restart_latest"}


def decompress_data(data_dir: Path, work_dir: Path, prefix: str = PREFIX) -> None:
    """``<data_dir>/<prefix>_<split>.extxyz.xz`` -> ``<work_dir>/data/<prefix>_<split>.extxyz``."""
    import lzma

    out = work_dir / "data"
    out.mkdir(parents=True, exist_ok=True)
    for part in ("train", "valid", "test"):
        src = data_dir / f"{prefix}_{part}.extxyz.xz"
        with lzma.open(src, "rb") as fh:
            data = fh.read()
        atomic_write_bytes(out / f"{prefix}_{part}.extxyz", data)


def mace_command(data_dir: Path, work_dir: Path, device: str, hp: dict,
                 target: Target = DEFAULT_TARGET) -> list[str]:
    return [sys.executable, "-m", "mace.cli.run_train",
            *mace_arguments(data_dir, work_dir, device, hp, target)]


def _offline_env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled",
               TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    return env


def evaluate(model_path: Path, test_file: Path, device: str = "cpu", max_frames: int | None = None) -> dict:
    """Float64 errors of a MACE model on an extxyz file (meV units)."""
    import mace  # noqa: F401  (must precede e3nn)
    from mace.calculators import MACECalculator

    from openmm_mace_lp.systems.extxyz import read_frames

    from openmm_mace_lp.model_files import load_mace_model

    # The file this recipe just wrote: checked against its own digest, not an older card's.
    model = load_mace_model(model_path, sha256=sha256_of(model_path))
    calc = MACECalculator(models=[model], device=device, default_dtype="float64")
    frames = [(i, a) for i, a in enumerate(read_frames(test_file)) if a.info.get("config_type") != "IsolatedAtom"]
    if max_frames is not None:
        frames = frames[:max_frames]
    per_ct: dict[str, dict[str, list]] = {}
    first_frames = []
    for index, at in frames:
        ref_e = float(at.info["REF_energy"])
        ref_f = np.asarray(at.arrays["REF_forces"])
        ref_s = at.info.get("REF_stress")
        a = at.copy()
        a.calc = calc
        e = float(a.get_potential_energy())
        f = np.asarray(a.get_forces())
        d = per_ct.setdefault(at.info.get("config_type", "Default"), {"de": [], "df": [], "ds": [], "n": 0})
        d["de"].append((e - ref_e) / len(at))
        d["df"].append((f - ref_f).ravel())
        if ref_s is not None and at.pbc.any():
            d["ds"].append(np.asarray(a.get_stress(voigt=True)) - np.asarray(ref_s))
        d["n"] += 1
        if len(first_frames) < SUBSET_FRAMES:
            first_frames.append((index, len(at), d["de"][-1], d["df"][-1]))

    def summary(ds):
        de = np.concatenate([np.asarray(d["de"]) for d in ds])
        df = np.concatenate([np.concatenate(d["df"]) for d in ds])
        dss = [s for d in ds for s in d["ds"]]
        out = dict(frames=int(sum(d["n"] for d in ds)),
                   energy_rmse_meV_per_atom=float(np.sqrt(np.mean(de**2)) * 1e3),
                   energy_mae_meV_per_atom=float(np.mean(np.abs(de)) * 1e3),
                   force_rmse_meV_per_A=float(np.sqrt(np.mean(df**2)) * 1e3),
                   force_mae_meV_per_A=float(np.mean(np.abs(df)) * 1e3))
        if dss:
            out["stress_rmse_meV_per_A3"] = float(np.sqrt(np.mean(np.concatenate(dss) ** 2)) * 1e3)
        return out

    near_eq = [v for k, v in per_ct.items() if not k.startswith("rattled") and k != "close_contact"]
    subset = [dict(index=i, n_atoms=n, energy_error_meV_per_atom=1e3 * de,
                   force_rmse_meV_per_A=1e3 * float(np.sqrt(np.mean(df**2))))
              for i, n, de, df in first_frames]
    return dict(model=str(model_path.name), test_file=str(test_file.name), dtype="float64",
                overall=summary(list(per_ct.values())),
                # key kept from before close contacts existed: both kinds are displaced on purpose
                without_displaced_frames=summary(near_eq) if near_eq else None,
                by_config_type={k: summary([v]) for k, v in sorted(per_ct.items())},
                model_sha256=sha256_of(model_path),
                subset_check=dict(note="per-frame errors of the first test frames (mace's MACECalculator, "
                                       "float64); tests/systems/test_default_model.py recomputes them through "
                                       "the exported TorchScript module", frames=subset))


def model_card(target: Target, hp: dict, errors: dict, manifest: dict | None, command: list[str],
               train_seconds: float, device_name: str, closed_loop: dict | None = None) -> str:
    """The model card: teacher, data, hyper-parameters, split, errors, closed loop, limits, licence."""
    o = errors["overall"]
    teacher_lines, data_lines, limit_lines, licence = TEACHER_TEXT[target.teacher]
    lines = [
        f"# {target.model_name}: MACE water model trained on {teacher_lines[0]} (openmm-mace-lp)",
        "",
        ("The default model of openmm-mace-lp. " if target is DEFAULT_TARGET else "")
        + "Regenerate end to end with `systems/recipes/` (see its README).",
        "",
        f"- File: `{target.model_name}.model`, SHA-256 `{errors['model_sha256']}`.",
        "- Elements: H, O. Cutoff: " + f"{float(hp['r_max']):.1f} A.",
        "",
        "## Teacher and data",
        *teacher_lines[1:],
        *data_lines,
        "- Split by trajectory (80/10/10), never by frame.",
    ]
    if manifest and "counts" in manifest:
        c = manifest["counts"]
        lines += [f"- Frames (atoms): train {c['train']['frames']} ({c['train']['atoms']}), "
                  f"valid {c['valid']['frames']} ({c['valid']['atoms']}), "
                  f"test {c['test']['frames']} ({c['test']['atoms']})."]
    lines += _sampled_stage_lines(manifest or {}, errors["model_sha256"], errors.get("trained_on_stages"))
    lines += _lineage_lines(hp)
    lines += [f"- Licence: {licence}", "", "## Architecture and training", "| option | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in hp.items()]
    lines += [
        "",
        f"Trained with mace-torch's `run_train` in {train_seconds / 60:.1f} min on {device_name}. Command:",
        "",
        "```",
        shlex.join(command),
        "```",
        "",
        "## Errors on the held-out test split (float64 evaluation)",
        f"- Force RMSE: **{o['force_rmse_meV_per_A']:.1f} meV/A** (target <= {ERROR_TARGETS[target.teacher][0]:g})",
        f"- Energy RMSE: **{o['energy_rmse_meV_per_atom']:.2f} meV/atom** (target <= {ERROR_TARGETS[target.teacher][1]:g})",
    ]
    ne = errors.get("without_displaced_frames")
    if ne:
        lines.append(f"- Without the randomly displaced (rattled) and close-contact frames: force RMSE "
                     f"{ne['force_rmse_meV_per_A']:.1f} meV/A, energy RMSE {ne['energy_rmse_meV_per_atom']:.2f} meV/atom")
    if "stress_rmse_meV_per_A3" in o:
        lines.append(f"- Stress RMSE (periodic frames): {o['stress_rmse_meV_per_A3']:.2f} meV/A^3")
    lines += ["", "| config_type | frames | E RMSE meV/atom | F RMSE meV/A |", "| --- | --- | --- | --- |"]
    for k, v in errors["by_config_type"].items():
        lines.append(f"| {k} | {v['frames']} | {v['energy_rmse_meV_per_atom']:.2f} | {v['force_rmse_meV_per_A']:.1f} |")
    lines += ["", "## Status", *_status_lines(target, hp, errors, train_seconds, closed_loop)]
    if closed_loop:
        lines += ["", "## Closed loop: the model's NPT against the teacher's own NPT", "",
                  closed_loop.get("markdown_table", ""),
                  "", f"Source: `benchmarks/results/{closed_loop.get('file', '')}` ({closed_loop.get('card', '')})."]
    lines += ["", "## Known limits", *limit_lines, ""]
    return "\n".join(lines)


def _lineage_lines(hp: dict) -> list[str]:
    """Which model training continued from (mace's ``--foundation_model``): earlier models leave
    the tree when they are superseded, so the card names the file; git history and
    ``benchmarks/results/closed_loop_*`` keep them."""
    start = hp.get("foundation_model")
    if not start:
        return []
    return [f"- Training continued from `{Path(str(start)).name}` (mace `--foundation_model`, "
            f"`multiheads_finetuning` {hp.get('multiheads_finetuning', 'default')}): its weights were the start, "
            "the data set above the whole training set."]


def model_npt_stages(manifest: dict | None) -> list[str]:
    """The data set's stages of models' own NPT frames (run_frames.py), by manifest key, in the
    order they were added."""
    return [k for k, v in (manifest or {}).items() if k.startswith("model_npt_stage") and isinstance(v, dict)]


def _sampled_stage_lines(manifest: dict, model_sha256: str, trained_on: list[str] | None = None) -> list[str]:
    """Frames of models' own NPT runs in the data set (run_frames.py): one line per stage, saying
    whether this model has learnt from them. Not learnt: frames of its own runs (they came after
    it), and any stage missing from ``trained_on``, the stages its training saw (stored in the
    errors JSON at training time; None: only the own-runs rule)."""
    lines = []
    for key in model_npt_stages(manifest):
        stage = manifest[key]
        models = stage.get("sampling_models_sha256", [])
        added = ", ".join(f"{split} {n}" for split, n in stage.get("frames_added", {}).items() if n)
        later = model_sha256 in models or (trained_on is not None and key not in trained_on)
        lines.append(f"- The data set also holds frames of NPT runs of model {', '.join(m[:8] for m in models)} "
                     f"labelled by the teacher ({added}; `systems/recipes/run_frames.py`)"
                     + (": added after this model was trained, which has not learnt from them." if later else "."))
    return lines


def _status_lines(target: Target, hp: dict, errors: dict, train_seconds: float,
                  closed_loop: dict | None) -> list[str]:
    """What this model has and has not been shown to do, first thing a reader sees after the errors."""
    o = errors["overall"]
    force_target, energy_target = ERROR_TARGETS[target.teacher]
    lines = []
    if o["force_rmse_meV_per_A"] > force_target or o["energy_rmse_meV_per_atom"] > energy_target:
        lines.append(f"- **The test errors miss the targets** (forces {o['force_rmse_meV_per_A']:.1f} meV/A against "
                     f"<= {force_target:g}, energies {o['energy_rmse_meV_per_atom']:.2f} meV/atom against "
                     f"<= {energy_target:g}). This model was trained for {hp['max_num_epochs']} epochs "
                     f"({train_seconds / 60:.1f} min); more epochs (`--epochs`) are the next step.")
    else:
        lines.append("- The test errors meet the targets.")
    measured = [t for t in (closed_loop or {}).get("temperatures", []) if t.get("checks")]
    if measured:
        rows = [f"{t['temperature_K']:g} K {100 * t['checks']['density']['relative_difference']:+.1f} %"
                for t in measured]
        held = all(t["checks"]["density"]["met"] for t in measured)
        lines.append(f"- **{'Holds' if held else 'Does not hold'} its teacher's density under NPT** (model minus "
                     f"teacher: {', '.join(rows)}; the closed loop below). "
                     + ("" if held else "Frames of its own NPT runs, labelled by the teacher "
                        "(`systems/recipes/run_frames.py`), are the next round of training data."))
    failed = [t for t in (closed_loop or {}).get("temperatures", [])
              if (t.get("model") or t.get("model_run") or {}).get("status") == "failed"]
    for t in failed:
        run = t.get("model") or t.get("model_run")
        lines.append(f"- **Its NPT run at {t['temperature_K']:g} K failed**: {run.get('failure')}.")
    if not closed_loop or not closed_loop.get("model_runs_complete"):
        lines.append("- The closed loop is incomplete: not every temperature has the model's full production run "
                     "(`benchmarks/closed_loop.py run --who model`).")
    return lines


# Force (meV/A) and energy (meV/atom) RMSE targets per teacher.
ERROR_TARGETS = {"amoeba": (40.0, 1.0), "gfn2-xtb": (60.0, 1.5)}

TEACHER_TEXT = {
    "amoeba": (
        ["AMOEBA water",
         "- **The model reproduces a classical polarisable force field, not electronic structure.** Labels: AMOEBA "
         "water (OpenMM's `amoeba2018.xml`, the AMOEBA03 water model: flexible, polarisable multipoles), mutual "
         "induced dipoles converged to 1e-8, PME electrostatics and vdW cutoff 0.8 nm for every periodic frame, no "
         "cutoff for clusters (settings in `systems/data/water_amoeba_manifest.json`). Energies eV, forces eV/A, "
         "stress eV/A^3 from central finite differences of the energy under homogeneous strain (periodic frames).",
         "- E0s are zero for H and O: AMOEBA's isolated monomer at its minimum is ~0 eV, so the model's energy is "
         "the teacher's total energy."],
        ["- Configurations from the teacher's own MD (OpenMM, extrapolated polarisation, 1 fs): NPT at 1.01325 bar, "
         "250-400 K, and NVT at 0.90-1.10 g/cm^3 of 216-water boxes; whole-molecule clusters cut from them; randomly "
         "displaced frames; rigid-molecule strained boxes; close-contact dimers for the repulsive wall "
         "(`systems/recipes/amoeba_data.py`)."],
        ["- Water only (H, O).",
         "- Reproduces AMOEBA03 water, a classical polarisable model, not experiment and not quantum chemistry.",
         "- Short-ranged (5 A cutoff, 10 A receptive field): the teacher's long-range electrostatics (PME) and "
         "its long-range dispersion correction are learnt only as far as they act inside that range.",
         "- Trained on 250-400 K and 0.90-1.10 g/cm^3 liquid; ice, vapour, ions and bond breaking are outside the "
         "data."],
        "data CC0-1.0 (generated by this project with OpenMM, MIT/LGPL); model MIT like this package."),
    "gfn2-xtb": (
        ["GFN2-xTB",
         "- Labels: GFN2-xTB (tblite, accuracy 1.0, electronic temperature 300 K); energies eV, forces eV/A, "
         "stress eV/A^3 (periodic frames); E0s from the isolated atoms (H doublet, O triplet)."],
        ["- Configurations: flexible-TIP3P NVT MD (OpenMM) of 32- and 64-molecule periodic boxes, 260-400 K, "
         "0.90-1.10 g/cm^3, clusters, displaced and strained frames, expanded and cavity boxes, close-contact dimers "
         "and one round of the model's own NPT frames (`water_data.py`, `low_density.py`, `close_contacts.py`, "
         "`model_md.py`)."],
        ["- Water only (H, O). Reproduces GFN2-xTB, not experiment.",
         "- **Does not hold the liquid's density under NPT**: GFN2-xTB's own pressure is positive on the boxes such "
         "a run passes through (`benchmarks/results/npt_2026-11-28_h200_water1029_6a4d37cf.md`)."],
        "data CC0-1.0 (generated by this project). tblite is LGPL-3.0-or-later."),
}


def _closed_loop_summary(path: Path | None) -> dict | None:
    """The closed-loop result file's table for the card (written by benchmarks/closed_loop.py)."""
    if path is None:
        return None
    data = json.loads(path.read_text())
    return dict(markdown_table=data.get("markdown_table", ""), file=path.name, card=data.get("card", ""),
                model_runs_complete=bool(data.get("model_runs_complete")),
                temperatures=data.get("temperatures", []))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", choices=sorted(TARGETS), default=DEFAULT_TARGET.teacher,
                   help="whose data set to train on (default amoeba: the embedded model)")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--work-dir", type=Path, default=Path("build/mace_water"))
    p.add_argument("--models-dir", type=Path, default=MODELS_DIR,
                   help="where the final model, errors JSON and card go (default systems/models)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--epochs", type=int, default=None, help="override max_num_epochs (stage two starts at 40%%)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny model, 1 epoch, 24 train frames; outputs stay in --work-dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one mace option of the hyper-parameters (repeatable), e.g. --set batch_size=16")
    p.add_argument("--print-command", action="store_true")
    p.add_argument("--card-only", action="store_true",
                   help="rewrite the model card from the stored errors JSON and data manifest (no training)")
    p.add_argument("--closed-loop", type=Path, default=None,
                   help="with --card-only: a benchmarks/results/closed_loop_*.json to show in the card")
    p.add_argument("--reevaluate", action="store_true",
                   help="evaluate the stored model on the test split again (e.g. after the error tables "
                        "changed), keep the training record, rewrite errors JSON and card (no training)")
    a = p.parse_args(argv)

    import torch

    target = TARGETS[a.teacher]
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    hp = dict(target.hyperparameters)
    data_dir = a.data_dir
    models_dir = a.models_dir
    if a.smoke:
        hp.update(SMOKE_OVERRIDES)
        data_dir = a.work_dir / "smoke_data"
        models_dir = a.work_dir / "smoke_models"
    if a.epochs is not None:
        hp["max_num_epochs"] = a.epochs
        hp["start_stage_two"] = max(1, (2 * a.epochs) // 5)
    for kv in a.set:
        k, v = kv.split("=", 1)
        hp[k] = {"true": True, "false": False}.get(v.lower(), v)
    if a.reevaluate:
        return reevaluate(target, models_dir, data_dir, device)
    if a.card_only:
        return rewrite_card(target, models_dir, data_dir, a.closed_loop)
    cmd = mace_command(data_dir, a.work_dir, device, hp, target)
    if a.print_command:
        print(shlex.join(cmd))
        return 0
    a.work_dir.mkdir(parents=True, exist_ok=True)
    if a.smoke:
        _write_smoke_subsets(a.data_dir, data_dir, target.prefix)
    decompress_data(data_dir, a.work_dir, target.prefix)
    mpath = data_dir / f"{target.prefix}_manifest.json"
    trained_on = model_npt_stages(json.loads(mpath.read_text())) if mpath.exists() else []
    print("+ " + shlex.join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, env=_offline_env())
    train_seconds = time.time() - t0
    name = target.model_name
    candidates = [a.work_dir / f"{name}_stagetwo.model", a.work_dir / f"{name}.model"]
    final = next(c for c in candidates if c.exists())
    out_model = models_dir / f"{name}.model"
    models_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_model) as tmp:
        shutil.copyfile(final, tmp)
    errors = evaluate(out_model, data_dir / f"{target.prefix}_test.extxyz.xz", device=device)
    errors.update(train_seconds=train_seconds, device=device,
                  device_name=torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
                  hyperparameters=hp, command=cmd, source_model=final.name, teacher=target.teacher,
                  trained_on_stages=trained_on)
    atomic_write_text(models_dir / f"{name}.test_errors.json", json.dumps(errors, indent=1))
    manifest = json.loads(mpath.read_text()) if mpath.exists() else None
    atomic_write_text(models_dir / f"{name}.md",
                      model_card(target, hp, errors, manifest, cmd, train_seconds, errors["device_name"]))
    o = errors["overall"]
    print(f"test: force RMSE {o['force_rmse_meV_per_A']:.1f} meV/A, energy RMSE "
          f"{o['energy_rmse_meV_per_atom']:.2f} meV/atom -> {out_model}", flush=True)
    return 0


def reevaluate(target: Target, models_dir: Path, data_dir: Path, device: str) -> int:
    """The stored model's test errors again, with the training record of the stored errors JSON."""
    path = models_dir / f"{target.model_name}.test_errors.json"
    stored = json.loads(path.read_text())
    errors = evaluate(models_dir / f"{target.model_name}.model", data_dir / f"{target.prefix}_test.extxyz.xz",
                      device=device)
    errors.update({k: stored[k] for k in ("train_seconds", "device", "device_name", "hyperparameters", "command",
                                          "source_model", "teacher", "trained_on_stages", "teacher_densities")
                   if k in stored})
    atomic_write_text(path, json.dumps(errors, indent=1))
    return rewrite_card(target, models_dir, data_dir)


def teacher_densities(closed_loop: dict) -> list[dict]:
    """The teacher's own NPT densities per temperature, as the analysis draws them next to a run
    of this model (``analysis.plots``): the model's target is its teacher, not experiment."""
    rows = []
    for entry in closed_loop.get("temperatures", []):
        teacher = entry.get("teacher") or {}
        if teacher.get("density_g_cm3") is None:
            continue
        rows.append({"temperature_K": float(entry["temperature_K"]), "density_g_cm3": float(teacher["density_g_cm3"]),
                     "sem": float(teacher.get("density_sem") or 0.0),
                     "source": f"benchmarks/results/{closed_loop.get('file', '')}", "card": closed_loop.get("card", "")})
    return rows


def rewrite_card(target: Target, models_dir: Path, data_dir: Path, closed_loop: Path | None = None) -> int:
    """The card again from what training stored, e.g. after its text changed or the closed loop ran.
    A closed loop also stores the teacher's densities in the errors JSON (``teacher_densities``)."""
    errors_path = models_dir / f"{target.model_name}.test_errors.json"
    errors = json.loads(errors_path.read_text())
    manifest = json.loads((data_dir / f"{target.prefix}_manifest.json").read_text())
    summary = _closed_loop_summary(closed_loop)
    if summary is not None:
        errors["teacher_densities"] = teacher_densities(summary)
        atomic_write_text(errors_path, json.dumps(errors, indent=1))
    atomic_write_text(models_dir / f"{target.model_name}.md", model_card(
        target, errors["hyperparameters"], errors, manifest, errors["command"], errors["train_seconds"],
        errors["device_name"], summary))
    return 0


def _write_smoke_subsets(src: Path, dst: Path, prefix: str, n_train: int = 24, n_other: int = 6) -> None:
    """Small subsets of the real splits (isolated atoms kept in train)."""
    import ase.io

    from openmm_mace_lp.systems.extxyz import read_frames

    dst.mkdir(parents=True, exist_ok=True)
    for part, n in (("train", n_train), ("valid", n_other), ("test", n_other)):
        frames = read_frames(src / f"{prefix}_{part}.extxyz.xz")
        iso = [f for f in frames if f.info.get("config_type") == "IsolatedAtom"]
        rest = [f for f in frames if f.info.get("config_type") != "IsolatedAtom"]
        # a few periodic frames (stress) and clusters
        per = [f for f in rest if f.pbc.any()][: max(1, n // 4)]
        clu = [f for f in rest if not f.pbc.any()][: n - len(per)]
        ase.io.write(str(dst / f"{prefix}_{part}.extxyz.xz"), iso + per + clu, format="extxyz")
    man = src / f"{prefix}_manifest.json"
    if man.exists():
        shutil.copyfile(man, dst / man.name)


if __name__ == "__main__":
    sys.exit(main())
