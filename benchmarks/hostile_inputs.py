"""Bad input, tried on purpose: does each kind end in a clear error, and does it leave files?

Every case feeds one kind of bad input to the public API (``MLPotential("mace-lp", ...)``,
``createSystem``, ``createMixedSystem``, ``load_config``, ``simulate``) or to the command line
(``openmm_mace_lp.cli.main([...])`` in this process, or ``python -m openmm_mace_lp.cli`` in a
subprocess where another process, another user or the real entry point matters). Each case
runs in its own folder; the folder and the export cache are listed (every file's size and
SHA-256, every directory) right before and right after the one call under test.

Outcomes:

* **clear**: our error (ValueError, TypeError, FileNotFoundError, RuntimeError; openmm-ml's KeyError for a
  name; OpenMM's own exception where OpenMM is the one who checks) whose message matches what
  the case says it must name; on the CLI a non-zero status, no traceback and one ``error:``
  line (argparse's usage block plus its one error line counts as clear).
* **flagged**: no error, but the result cannot be mistaken for a number (NaN energy for NaN
  positions, the documented contract of the exported module).
* **warned**: no error, but a warning that names the problem.
* **unclear**: an error, but of another type, with a traceback, or not naming the problem.
* **silent**: no error and nothing that says the input was wrong.

**Partial files**: anything new, changed or removed in the case's folder or the export cache
(new files in the cache that are complete exports, a ``.pt`` with its matching ``.sha256``,
are listed but not counted: a cache entry is not a partial file; nor are the cache's own
folders, nor the failure record a guard writes by design, for the one case whose bad input
only the model can see: overlapping atoms).

    python benchmarks/hostile_inputs.py            # all cases, a few minutes on 2 cores
    python benchmarks/hostile_inputs.py -k resume  # only cases whose name contains "resume"
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "hostile_inputs_2026-12-01_cpu"
# Run as root without the capabilities that bypass file permissions: a read-only folder is
# then read-only to the process, as it is to any ordinary user.
WITHOUT_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
               "--inh-caps=-dac_override,-dac_read_search", "--"]
SUBPROCESS_TIMEOUT_S = 180

os.environ.setdefault("OMP_NUM_THREADS", "1")


# ----------------------------------------------------------------------------- records


@dataclass
class Attempt:
    """What one call under test did."""

    interface: str  # "API" or "CLI"
    error: BaseException | None = None  # API: the exception raised
    value: Any = None  # API: what the call returned
    rc: int | None = None  # CLI: exit status
    stdout: str = ""
    stderr: str = ""
    traceback: bool = False  # CLI: an exception escaped main() / a traceback was printed
    warnings: list[str] = field(default_factory=list)
    changes: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Case:
    name: str
    group: str
    interface: str
    description: str
    expect: re.Pattern  # what a clear message must name
    run: Callable[["Sandbox"], Attempt]
    types: Callable[[], tuple[type, ...]] | None = None  # accepted exception types (None: ours)
    flag: Callable[[Any], str | None] | None = None  # evidence that a returned value flags the input
    documented: re.Pattern | None = None  # files the design says such a failure leaves (evidence)


@dataclass
class Result:
    name: str
    group: str
    interface: str
    description: str
    outcome: str
    message: str
    partial: list[str]
    cache_entries: list[str]
    seconds: float
    detail: dict[str, Any]
    documented: list[str] = field(default_factory=list)
    note: str = ""


CASES: list[Case] = []


def case(group: str, interface: str, expect: str, *, types: Callable[[], tuple[type, ...]] | None = None,
         flag: Callable[[Any], str | None] | None = None, documented: str | None = None) -> Callable:
    """Register a case; its docstring is the description of the bad input."""

    def register(function: Callable[["Sandbox"], Attempt]) -> Callable:
        name = function.__name__.removeprefix("case_").replace("_", "-")
        CASES.append(Case(name, group, interface, " ".join((function.__doc__ or name).split()),
                          re.compile(expect, re.IGNORECASE | re.DOTALL), function, types, flag,
                          re.compile(documented) if documented else None))
        return function

    return register


# ----------------------------------------------------------------------------- listings


def listing(root: Path) -> dict[str, str]:
    """Every entry under ``root``: relative path -> "dir" or "<size>:<sha256>"."""
    entries: dict[str, str] = {}
    if not root.exists():
        return entries
    for directory, names, files in os.walk(root):
        base = Path(directory)
        for name in names:
            entries[str((base / name).relative_to(root)) + "/"] = "dir"
        for name in files:
            path = base / name
            try:
                data = path.read_bytes()
            except OSError as error:
                entries[str(path.relative_to(root))] = f"unreadable:{error.errno}"
                continue
            entries[str(path.relative_to(root))] = f"{len(data)}:{hashlib.sha256(data).hexdigest()}"
    return entries


def compare_listings(before: dict[str, str], after: dict[str, str], prefix: str) -> dict[str, list[str]]:
    new = sorted(prefix + k for k in after.keys() - before.keys())
    removed = sorted(prefix + k for k in before.keys() - after.keys())
    changed = sorted(prefix + k for k in before.keys() & after.keys() if before[k] != after[k])
    return {"new": new, "removed": removed, "changed": changed}


# ----------------------------------------------------------------------------- fixtures


class Fixtures:
    """What many cases need: models, a structure, finished and stopped runs, a warm cache."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.cache = work / "cache"
        self.dir = work / "fixtures"
        self.dir.mkdir(parents=True)
        os.environ["OPENMM_MACE_LP_CACHE"] = str(self.cache)

    def build(self) -> None:
        from openmm_mace_lp.upstream import import_mace

        import_mace()
        import torch

        from openmm_mace_lp.systems.architectures import TINY, build_mace, save_model

        arch = dataclasses.replace(TINY, max_ell=1, correlation=3)
        self.model = self.dir / "tiny.model"
        save_model(build_mace(arch, seed=1), self.model)
        self.other_model = self.dir / "tiny-seed2.model"
        save_model(build_mace(arch, seed=2), self.other_model)
        good = self.model.read_bytes()
        self.truncated_model = self._write("truncated.model", good[: len(good) // 2])
        self.text_model = self._write("notes.model", b"this is not a MACE model\n")
        self.empty_model = self._write("empty.model", b"")
        self.state_dict_model = self.dir / "state_dict.model"
        torch.save({"weights": torch.zeros(3)}, self.state_dict_model)
        self.linear_model = self.dir / "linear.model"
        torch.save(torch.nn.Linear(3, 1), self.linear_model)
        self.zip_model = self.dir / "archive.model"
        with zipfile.ZipFile(self.zip_model, "w") as archive:
            archive.writestr("readme.txt", "a zip archive, but not one torch wrote")
        self.model_folder = self.dir / "models"
        self.model_folder.mkdir()
        shutil.copyfile(self.model, self.model_folder / "water.model")
        self._structures()
        self._runs()

    def _write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path

    def _structures(self) -> None:
        from openmm import app, unit

        from openmm_mace_lp.systems.builders import water_box

        self.water = water_box(8)
        self.pdb = self.dir / "water8.pdb"
        with open(self.pdb, "w") as handle:
            app.PDBFile.writeFile(self.water.topology, self.water.positions * 10.0 * unit.angstrom, handle)
        lines = self.pdb.read_text().splitlines(keepends=True)
        self.pdb_no_box = self._write("water8_nobox.pdb", "".join(
            line for line in lines if not line.startswith("CRYST1")).encode())
        atom_lines = [i for i, line in enumerate(lines) if line.startswith(("ATOM", "HETATM"))]
        nan_lines = list(lines)
        first = nan_lines[atom_lines[0]]
        nan_lines[atom_lines[0]] = first[:30] + f"{'nan':>8}" + first[38:]
        self.pdb_nan = self._write("water8_nan.pdb", "".join(nan_lines).encode())
        xx_lines = list(lines)
        last = xx_lines[atom_lines[-1]]
        xx_lines[atom_lines[-1]] = last[:12] + " XX " + last[16:76] + f"{'XX':>2}" + last[78:]
        self.pdb_unknown_element = self._write("water8_xx.pdb", "".join(xx_lines).encode())
        cl_lines = list(lines)
        o_line = cl_lines[atom_lines[0]]
        cl_lines[atom_lines[0]] = o_line[:12] + " CL " + o_line[16:76] + f"{'CL':>2}" + o_line[78:]
        self.pdb_chlorine = self._write("water8_cl.pdb", "".join(cl_lines).encode())
        overlap = self.water.positions.copy()
        overlap[3] = overlap[0]  # an oxygen on top of another
        self.pdb_overlap = self.dir / "water8_overlap.pdb"
        with open(self.pdb_overlap, "w") as handle:
            app.PDBFile.writeFile(self.water.topology, overlap * 10.0 * unit.angstrom, handle)
        self.garbage = self._write("garbage.pdb", b"\x00\x01 not a structure \xff\xfe\n" * 20)
        self.empty_pdb = self._write("empty.pdb", b"")
        self.garbage_cif = self._write("garbage.cif", b"data_x\nloop_\n_atom_site.id\n1 2 3\n")

    def _runs(self) -> None:
        from openmm_mace_lp.simulations.config import load_config
        from openmm_mace_lp.simulations.run import RunHooks, simulate

        self.completed = self.dir / "completed"
        simulate(load_config(None, tiny_settings(self.model), "npt"), self.completed, quiet=True)
        self.interrupted = self.dir / "interrupted"
        config = load_config(None, tiny_settings(self.model), "npt")
        try:
            simulate(config, self.interrupted, quiet=True,
                     hooks=RunHooks(reporters={"production": [RaiseAt(6)]}))
        except KeyboardInterrupt:
            pass
        self.state_xml = self.completed / "final_state.xml"
        self._write_states()

    def _write_states(self) -> None:
        import openmm

        text = self.state_xml.read_text()
        self.state_not_xml = self._write("state.xml", b"<<< not xml")
        self.state_system = self.dir / "system.xml"
        system = openmm.System()
        system.addParticle(1.0)
        self.state_system.write_text(openmm.XmlSerializer.serialize(system))
        state = openmm.XmlSerializer.deserialize(text)
        context = openmm.Context(_one_particle_system(3), openmm.VerletIntegrator(0.001),
                                 openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(state.getPositions()[:3])
        self.state_wrong_atoms = self.dir / "state_3_atoms.xml"
        self.state_wrong_atoms.write_text(openmm.XmlSerializer.serialize(context.getState(getPositions=True)))
        self.state_nan = self._write("state_nan.xml", re.sub(r'(<Position x=")[^"]+', r"\1nan", text, count=1).encode())


def _one_particle_system(n: int):
    import openmm

    system = openmm.System()
    for _ in range(n):
        system.addParticle(1.0)
    return system


class RaiseAt:
    """OpenMM reporter that stops a run (KeyboardInterrupt) at one step: an interrupted run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def describeNextReport(self, simulation):  # noqa: N802 - OpenMM's reporter API
        remaining = self.step - simulation.currentStep
        return {"steps": remaining if remaining > 0 else 10**9, "periodic": None, "include": []}

    def report(self, simulation, state):
        raise KeyboardInterrupt("stopped by the fixture")


# The tiny run every config case starts from (8 waters, Reference, fp64, a handful of steps).
def base_config(model: Path) -> dict[str, Any]:
    return {
        "ensemble": "npt",
        "model": {"path": str(model), "policy": "fp64", "backend": "e3nn"},
        "system": {"water_molecules": 8},
        "integrator": {"timestep_fs": 0.5},
        "barostat": {"interval_steps": 2},
        "run": {"minimize": False, "equilibration_steps": 2, "production_steps": 8},
        "output": {"report_interval_steps": 2, "trajectory_interval_steps": 2,
                   "checkpoint_interval_steps": 4},
        "guards": {"max_temperature_factor": 10.0},
        "platform": {"name": "Reference", "device": "cpu", "cpu_threads": 1},
    }


def tiny_settings(model: Path, **overrides: Any) -> list[str]:
    """``--set`` strings of :func:`base_config` (dotted keys in ``overrides`` replace values)."""
    import tomli_w

    flat = {f"{section}.{key}": value for section, table in base_config(model).items()
            if isinstance(table, dict) for key, value in table.items()}
    flat.update(overrides)
    return [f"{key}={tomli_w.dumps({'v': value}).split('=', 1)[1].strip()}" for key, value in flat.items()]


DROP = object()


# ----------------------------------------------------------------------------- the sandbox


class Sandbox:
    """One case's folder, its fixtures, and the one call under test (listed before and after)."""

    def __init__(self, root: Path, fixtures: Fixtures) -> None:
        self.root = root
        self.fx = fixtures
        self.root.mkdir(parents=True)
        self.out = root / "run"

    # -- inputs ------------------------------------------------------------------------

    def config(self, changes: dict[str, Any] | None = None, name: str = "config.toml") -> Path:
        """A TOML config: the tiny base with dotted-key ``changes`` (DROP removes a key)."""
        import tomli_w

        data = base_config(self.fx.model)
        for dotted, value in (changes or {}).items():
            parts = dotted.split(".")
            table = data
            for part in parts[:-1]:
                table = table.setdefault(part, {})
            if value is DROP:
                table.pop(parts[-1], None)
            else:
                table[parts[-1]] = value
        path = self.root / name
        path.write_text(tomli_w.dumps(data))
        return path

    def text(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def copy_run(self, source: Path) -> Path:
        shutil.copytree(source, self.out)
        return self.out

    def load(self, changes: dict[str, Any] | None = None, ensemble: str = "npt"):
        from openmm_mace_lp.simulations.config import load_config

        return load_config(self.config(changes), ensemble=ensemble)

    # -- the call under test -----------------------------------------------------------

    def _roots(self) -> list[tuple[str, Path]]:
        return [("", self.root), ("cache/", self.fx.cache)]

    @contextlib.contextmanager
    def _watched(self, attempt: Attempt):
        before = {prefix: listing(path) for prefix, path in self._roots()}
        start = time.perf_counter()
        try:
            yield
        finally:
            attempt.seconds = time.perf_counter() - start
            changes: dict[str, list[str]] = {"new": [], "removed": [], "changed": []}
            for prefix, path in self._roots():
                diff = compare_listings(before[prefix], listing(path), prefix)
                if prefix == "cache/":  # the cache's own folders (models/, exports/) are no output
                    diff = {key: [n for n in names if not n.endswith("/")] for key, names in diff.items()}
                for key in changes:
                    changes[key] += diff[key]
            attempt.changes = changes

    def api(self, call: Callable[[], Any]) -> Attempt:
        attempt = Attempt("API")
        with self._watched(attempt), _captured_warnings(attempt):
            try:
                attempt.value = call()
            except BaseException as error:  # noqa: BLE001 - every kind of failure is a result here
                attempt.error = error
        return attempt

    def cli(self, *args: Any, cwd: Path | None = None) -> Attempt:
        """``openmm_mace_lp.cli.main(args)`` in this process, stdout/stderr captured."""
        from openmm_mace_lp.cli import main

        attempt = Attempt("CLI")
        out, err = io.StringIO(), io.StringIO()
        previous = os.getcwd()
        with self._watched(attempt), _captured_warnings(attempt):
            try:
                os.chdir(cwd or self.root)
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    try:
                        attempt.rc = main([str(a) for a in args])
                    except SystemExit as stop:
                        attempt.rc = stop.code if isinstance(stop.code, int) else 1
                    except BaseException:  # noqa: BLE001 - what a user would see as a traceback
                        attempt.traceback = True
                        attempt.rc = 1
                        traceback.print_exc()
            finally:
                os.chdir(previous)
        attempt.stdout, attempt.stderr = out.getvalue(), err.getvalue()
        return attempt

    def subprocess(self, *args: Any, obey_permissions: bool = False, cwd: Path | None = None) -> Attempt:
        """``python -m openmm_mace_lp.cli ARGS`` in a new process; with ``obey_permissions`` it
        cannot bypass file permissions (root without CAP_DAC_OVERRIDE, like any other user)."""
        attempt = Attempt("CLI")
        environment = {**os.environ, "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "openmm_mace_lp.cli", *map(str, args)]
        if obey_permissions:
            if shutil.which(WITHOUT_DAC[0]) is None:
                raise RuntimeError("setpriv (util-linux) is needed for the read-only cases")
            command = WITHOUT_DAC + command
        with self._watched(attempt):
            try:
                done = subprocess.run(command, cwd=cwd or self.root, env=environment, capture_output=True,
                                      text=True, timeout=SUBPROCESS_TIMEOUT_S)
                attempt.rc, attempt.stdout, attempt.stderr = done.returncode, done.stdout, done.stderr
            except subprocess.TimeoutExpired as expired:
                attempt.rc = None
                attempt.stderr = (expired.stderr or b"").decode() if isinstance(expired.stderr, bytes) else (expired.stderr or "")
                attempt.stderr += f"\n[timed out after {SUBPROCESS_TIMEOUT_S} s]"
        attempt.traceback = "Traceback (most recent call last)" in attempt.stderr
        return attempt


@contextlib.contextmanager
def _captured_warnings(attempt: Attempt):
    """Python warnings and WARNING+ log records raised during the call."""

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            attempt.warnings.append(f"{record.name}: {record.getMessage()}")

    handler = Collect(level=logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            root.removeHandler(handler)
            attempt.warnings += [f"{w.category.__name__}: {w.message}" for w in caught
                                 if not _harmless_warning(str(w.message))]


def _harmless_warning(text: str) -> bool:
    """Upstream deprecation chatter that says nothing about the input."""
    return any(part in text for part in ("TorchScript", "torch.jit", "deprecated", "weights_only",
                                         "TORCH_FORCE", "e3nn", "cuequivariance"))


# ----------------------------------------------------------------------------- judging


def our_error_types() -> tuple[type, ...]:
    from openmm_mace_lp.entry_point import UnknownPotentialName

    # TypeError is Python's own answer to an unknown keyword or an argument of the wrong type;
    # the message decides whether it names the problem (an upstream one seldom does).
    return (ValueError, TypeError, FileNotFoundError, RuntimeError, UnknownPotentialName)


def judge(case: Case, attempt: Attempt, folders: Sequence[Path] = ()) -> tuple[str, str]:
    """(outcome, message) of an attempt (see the module docstring). ``folders`` are written as
    <dir> before a message is matched, so that a case's own folder name never names the problem."""
    def names(pattern: re.Pattern, text: str) -> bool:
        for folder in sorted(map(str, folders), key=len, reverse=True):
            text = text.replace(folder, "<dir>")
        return pattern.search(text) is not None

    if attempt.interface == "API":
        return _judge_api(case, attempt, names)
    return _judge_cli(case, attempt, names)


def _judge_api(case: Case, attempt: Attempt, names: Callable[[re.Pattern, str], bool]) -> tuple[str, str]:
    error = attempt.error
    if error is None:
        if case.flag is not None:
            evidence = case.flag(attempt.value)
            if evidence:
                return "flagged", evidence
        named = [w for w in attempt.warnings if names(case.expect, w)]
        if named:
            return "warned", named[0]
        return "silent", f"returned {_describe(attempt.value)}"
    message = f"{type(error).__name__}: {error}"
    accepted = case.types() if case.types else our_error_types()
    if not isinstance(error, accepted):
        return "unclear", message + " [not one of our error types]"
    if not names(case.expect, str(error)):
        return "unclear", message + f" [does not name /{case.expect.pattern}/]"
    return "clear", message


def _judge_cli(case: Case, attempt: Attempt, names: Callable[[re.Pattern, str], bool]) -> tuple[str, str]:
    lines = [line for line in attempt.stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if attempt.rc is None:
        return "silent", "still running at the time limit (the input was accepted)"
    if attempt.rc == 0:
        named = [w for w in attempt.warnings + lines if names(case.expect, w)]
        if named:
            return "warned", named[0]
        return "silent", "exit status 0" + (f"; stdout: {_short(attempt.stdout.strip(), 100)}"
                                             if attempt.stdout.strip() else "")
    if attempt.traceback:
        return "unclear", f"rc {attempt.rc}, traceback: {_short(last, 200)}"
    error_lines = [line for line in lines if "error:" in line]
    if not error_lines:
        return "unclear", f"rc {attempt.rc}, no error line: {_short(last, 200)}"
    usage = attempt.rc == 2 and lines[0].startswith("usage:")
    extra = [line for line in lines if line not in error_lines]
    if not usage and extra:
        return "unclear", f"rc {attempt.rc}, {len(lines)} stderr lines: {_short(' | '.join(lines), 300)}"
    message = error_lines[-1]
    if not names(case.expect, message):
        return "unclear", f"rc {attempt.rc}: {message} [does not name /{case.expect.pattern}/]"
    return "clear", f"rc {attempt.rc}: {message}"


def _describe(value: Any) -> str:
    if value is None or isinstance(value, (int, float, str, bool)):
        return repr(value)
    return f"a {type(value).__module__}.{type(value).__name__}"


def consequence(fixtures: "Fixtures", value: Any) -> str:
    """What an openmm.System accepted from bad input does when evaluated (Reference platform,
    the 8-water positions): its energy, or the first line of the error."""
    import numpy as np
    import openmm
    from openmm import unit

    if not isinstance(value, openmm.System):
        return ""
    count = value.getNumParticles()
    positions = fixtures.water.positions if count == fixtures.water.positions.shape[0] else np.zeros((count, 3))
    try:
        context = openmm.Context(value, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(positions)
        energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    except Exception as error:  # noqa: BLE001 - the failure is the finding
        first = next((line for line in str(error).splitlines() if "Error" in line), str(error).splitlines()[0])
        return f"evaluating the returned System fails: {type(error).__name__}: {_short(first, 160)}"
    return f"the returned System evaluates to {energy:.6g} kJ/mol"


def cache_entries(new_files: list[str]) -> list[str]:
    """New cache files that are whole exports: a .pt with a .sha256 that matches it."""
    found = []
    for name in new_files:
        if name.startswith("cache/") and name.endswith(".pt") and f"{name}.sha256" in new_files:
            found += [name, f"{name}.sha256"]
    return found


def _verify_cache_entries(entries: list[str], cache: Path) -> list[str]:
    good = []
    for name in entries[::2]:
        path = cache / name.removeprefix("cache/")
        digest = Path(f"{path}.sha256")
        if path.is_file() and digest.is_file() and \
                hashlib.sha256(path.read_bytes()).hexdigest() == digest.read_text().strip():
            good += [name, f"{name}.sha256"]
    return good


def run_case(case: Case, fixtures: Fixtures, cases_dir: Path) -> Result:
    sandbox = Sandbox(cases_dir / case.name, fixtures)
    try:
        attempt = case.run(sandbox)
    except Exception as error:  # noqa: BLE001 - a broken case set-up, not a result
        return Result(case.name, case.group, case.interface, case.description, "setup-error",
                      f"{type(error).__name__}: {error}", [], [], 0.0, {"traceback": traceback.format_exc()})
    outcome, message = judge(case, attempt, [sandbox.root, fixtures.dir])
    message = message.replace(str(fixtures.work), "<work>")
    after = consequence(fixtures, attempt.value) if outcome == "silent" else ""
    changes = attempt.changes
    entries = _verify_cache_entries(cache_entries(changes["new"]), fixtures.cache)
    touched = [f"new {n}" for n in changes["new"] if n not in entries] + \
              [f"changed {n}" for n in changes["changed"]] + [f"removed {n}" for n in changes["removed"]]
    documented = [entry for entry in touched if case.documented and case.documented.search(entry.split(" ", 1)[1])]
    partial = [entry for entry in touched if entry not in documented]
    detail = {"rc": attempt.rc, "stderr": attempt.stderr[-4000:], "stdout": attempt.stdout[-2000:],
              "warnings": attempt.warnings[:10], "error_type": type(attempt.error).__name__ if attempt.error else None,
              "changes": changes, "manifest_status_after": _manifest_status(sandbox.out)}
    note = "; ".join(part for part in (_note(case, message), after) if part)
    detail["stderr"] = detail["stderr"].replace(str(fixtures.work), "<work>")
    detail["stdout"] = detail["stdout"].replace(str(fixtures.work), "<work>")
    return Result(case.name, case.group, case.interface, case.description, outcome, message, partial,
                  entries, round(attempt.seconds, 2), detail, documented, note)


def _manifest_status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "manifest.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def _note(case: Case, message: str) -> str:
    """Reviewer's remarks that the outcome alone does not carry."""
    if case.group == "--set" and re.search(r"config\.toml: ", message):
        return "the message puts a --set key in CONFIG (config.toml: ...), where it is not"
    return ""


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- API helpers


def _potential():
    from openmmml import MLPotential

    return MLPotential


def _water_topology(fx: Fixtures):
    return fx.water.topology


def _topology_with(fx: Fixtures, element_symbol: str | None):
    """The 8-water topology plus one atom of ``element_symbol`` (None: an atom without element)."""
    from openmm import app

    topology = app.Topology()
    chain = topology.addChain()
    for residue in fx.water.topology.residues():
        new = topology.addResidue(residue.name, chain)
        for atom in residue.atoms():
            topology.addAtom(atom.name, atom.element, new)
    extra = topology.addResidue("ION", chain)
    element = None if element_symbol is None else app.Element.getBySymbol(element_symbol)
    topology.addAtom(element_symbol or "X", element, extra)
    topology.setPeriodicBoxVectors(fx.water.topology.getPeriodicBoxVectors())
    return topology


def _mm_water_system(fx: Fixtures):
    """A classical System of the 8 waters (TIP3P-FB), for createMixedSystem."""
    from openmm import app

    forcefield = app.ForceField("amber14/tip3pfb.xml")
    return forcefield.createSystem(fx.water.topology, nonbondedMethod=app.CutoffPeriodic,
                                   nonbondedCutoff=0.3, rigidWater=False)  # below half the 0.62 nm box


def _tiny_potential(fx: Fixtures, **kwargs):
    return _potential()("mace-lp", modelPath=str(fx.model), policy="fp64", backend="e3nn", **kwargs)


def _energy_with_positions(fx: Fixtures, positions, box=None) -> float:
    """Potential energy (kJ/mol) of the tiny model's System at ``positions`` (nm), Reference."""
    import openmm
    from openmm import unit

    system = _tiny_potential(fx).createSystem(fx.water.topology, device="cpu")
    context = openmm.Context(system, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName("Reference"))
    if box is not None:
        context.setPeriodicBoxVectors(*box)
    context.setPositions(positions)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def _step_with_positions(fx: Fixtures, positions) -> float:
    """Two Langevin steps from ``positions``, then the potential energy (kJ/mol)."""
    import openmm
    from openmm import unit

    system = _tiny_potential(fx).createSystem(fx.water.topology, device="cpu")
    integrator = openmm.LangevinMiddleIntegrator(300, 1, 0.0005)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    integrator.step(2)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def _non_finite(value: Any) -> str | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isfinite(number) else f"energy {number} kJ/mol (non-finite: the input cannot pass as a result)"


def _openmm_exception() -> tuple[type, ...]:
    import openmm

    return (*our_error_types(), openmm.OpenMMException)


def _simulate(s: Sandbox, config, **kwargs) -> Attempt:
    from openmm_mace_lp.simulations.run import simulate

    return s.api(lambda: simulate(config, s.out, quiet=True, **kwargs))


def _simulate_cli(s: Sandbox, config: Path | None, *extra: Any, ensemble: str = "npt") -> Attempt:
    args: list[Any] = ["simulate", ensemble]
    if config is not None:
        args.append(config)
    return s.cli(*args, "-o", s.out, "--quiet", *extra)


# ============================================================================= the cases
# ----------------------------------------------------------------------------- model files (API)


@case("model", "API", r"does not exist.*modelPath")
def case_model_path_missing(s):
    """MLPotential('mace-lp', modelPath=<a file that does not exist>)"""
    return s.api(lambda: _potential()("mace-lp", modelPath=str(s.root / "nope.model")))


@case("model", "API", r"is a directory.*water\.model")
def case_model_path_directory(s):
    """modelPath is a directory holding a .model file"""
    return s.api(lambda: _potential()("mace-lp", modelPath=str(s.fx.model_folder)))


@case("model", "API", r"truncated|corrupt")
def case_model_truncated(s):
    """modelPath is the first half of a real .model file (createSystem)"""
    return s.api(lambda: _potential()("mace-lp", modelPath=str(s.fx.truncated_model)).createSystem(
        _water_topology(s.fx), device="cpu"))


@case("model", "API", r"not a PyTorch-saved model")
def case_model_not_a_zip(s):
    """modelPath is a text file named .model"""
    return s.api(lambda: _potential()("mace-lp", modelPath=str(s.fx.text_model)).createSystem(
        _water_topology(s.fx), device="cpu"))


@case("model", "API", r"is empty")
def case_model_empty_file(s):
    """modelPath is an empty file"""
    return s.api(lambda: _potential()("mace-lp", modelPath=str(s.fx.empty_model)).createSystem(
        _water_topology(s.fx), device="cpu"))


@case("model", "API", r"holds a dict, not a MACE model")
def case_model_state_dict(s):
    """modelPath is a torch-saved dict (a state dict, not a model)"""
    return s.api(lambda: _potential()("mace-lp", modelPath=str(s.fx.state_dict_model)).createSystem(
        _water_topology(s.fx), device="cpu"))


@case("model", "API", r"Cannot load .* as a MACE model|not a PyTorch")
def case_model_foreign_zip(s):
    """modelPath is a zip archive that torch did not write"""
    return s.api(lambda: _potential()("mace-lp", modelPath=str(s.fx.zip_model)).createSystem(
        _water_topology(s.fx), device="cpu"))


@case("model", "API", r"without 'atomic_numbers'|not a MACE")
def case_model_other_torch_module(s):
    """modelPath is a torch-saved nn.Linear (a module, not MACE)"""
    return s.api(lambda: _potential()("mace-lp", modelPath=str(s.fx.linear_model)).createSystem(
        _water_topology(s.fx), device="cpu"))


@case("model", "API", r"no parameters for element.*Cl")
def case_model_wrong_element(s):
    """topology holds Cl, which the model (H, C, N, O) has no parameters for"""
    return s.api(lambda: _tiny_potential(s.fx).createSystem(_topology_with(s.fx, "Cl"), device="cpu"))


@case("model", "API", r"Unknown potential name 'mace-of24-lp'.*mace-off24-lp")
def case_model_name_misspelt(s):
    """MLPotential('mace-of24-lp') (a misspelt registered name)"""
    return s.api(lambda: _potential()("mace-of24-lp"))


@case("model", "API", r"Unknown model name 'mace-off99-lp'")
def case_model_name_unknown_to_factory(s):
    """the factory asked for 'mace-off99-lp'"""
    from openmm_mace_lp.entry_point import MACELPPotentialImplFactory

    return s.api(lambda: MACELPPotentialImplFactory().createImpl("mace-off99-lp"))


@case("model", "API", r"Cannot download model 'mace-off24-lp'.*modelPath=")
def case_model_known_name_offline(s):
    """MLPotential('mace-off24-lp') on a machine without internet (its weights must be downloaded)"""
    return s.api(lambda: _potential()("mace-off24-lp").createSystem(_water_topology(s.fx), device="cpu"))


# ----------------------------------------------------------------------------- potential options (API)


@case("options", "API", r"Unknown precision policy 'int8'")
def case_policy_unknown(s):
    """policy='int8'"""
    return s.api(lambda: _potential()("mace-lp", modelPath=str(s.fx.model), policy="int8"))


@case("options", "API", r"policy.*32|Unknown precision policy")
def case_policy_wrong_type(s):
    """policy=32 (a number instead of a name)"""
    return s.api(lambda: _potential()("mace-lp", modelPath=str(s.fx.model), policy=32))


@case("options", "API", r"Unknown backend 'triton'")
def case_backend_unknown(s):
    """backend='triton'"""
    return s.api(lambda: _potential()("mace-lp", modelPath=str(s.fx.model), backend="triton"))


@case("options", "API", r"polcy")
def case_potential_keyword_misspelt(s):
    """MLPotential('mace-lp', modelPath=..., polcy='bf16') (misspelt keyword)"""
    return s.api(lambda: _potential()("mace-lp", modelPath=str(s.fx.model), polcy="bf16").createSystem(
        _water_topology(s.fx), device="cpu"))


@case("options", "API", r"returnEnergytype")
def case_create_system_keyword_misspelt(s):
    """createSystem(..., returnEnergytype='energy') (misspelt keyword)"""
    return s.api(lambda: _tiny_potential(s.fx).createSystem(_water_topology(s.fx), device="cpu",
                                                            returnEnergytype="energy"))


@case("options", "API", r"no CUDA device")
def case_device_cuda_without_gpu(s):
    """createSystem(device='cuda') on a machine without a GPU"""
    return s.api(lambda: _tiny_potential(s.fx).createSystem(_water_topology(s.fx), device="cuda"))


@case("options", "API", r"tpu")
def case_device_unknown(s):
    """createSystem(device='tpu')"""
    return s.api(lambda: _tiny_potential(s.fx).createSystem(_water_topology(s.fx), device="tpu"))


@case("options", "API", r"free_energy|returnEnergyType|energy type")
def case_energy_type_unknown(s):
    """createSystem(returnEnergyType='free_energy')"""
    return s.api(lambda: _tiny_potential(s.fx).createSystem(_water_topology(s.fx), device="cpu",
                                                            returnEnergyType="free_energy"))


@case("options", "API", r"Metal|platform")
def case_platform_hint_unknown(s):
    """createSystem(platform='Metal') (no such OpenMM platform)"""
    return s.api(lambda: _tiny_potential(s.fx).createSystem(_water_topology(s.fx), device="cpu",
                                                            platform="Metal"))


@case("options", "API", r"margin")
def case_neighbor_margin_negative(s):
    """createSystem(fixedNeighborList=True, neighborMargin=-0.5)"""
    return s.api(lambda: _tiny_potential(s.fx).createSystem(
        _water_topology(s.fx), device="cpu", fixedNeighborList=True, positions=s.fx.water.positions,
        neighborMargin=-0.5))


@case("options", "API", r"margin")
def case_neighbor_margin_nan(s):
    """createSystem(fixedNeighborList=True, neighborMargin=nan)"""
    return s.api(lambda: _tiny_potential(s.fx).createSystem(
        _water_topology(s.fx), device="cpu", fixedNeighborList=True, positions=s.fx.water.positions,
        neighborMargin=float("nan")))


# ----------------------------------------------------------------------------- topologies and positions (API)


@case("positions", "API", r"not finite.*index 4")
def case_sizing_positions_nan(s):
    """fixed-capacity list sized from positions with a NaN atom"""
    positions = s.fx.water.positions.copy()
    positions[4] = float("nan")
    return s.api(lambda: _tiny_potential(s.fx).createSystem(_water_topology(s.fx), device="cpu",
                                                            fixedNeighborList=True, positions=positions))


@case("positions", "API", r"not finite")
def case_sizing_positions_inf(s):
    """fixed-capacity list sized from positions with an infinite coordinate"""
    positions = s.fx.water.positions.copy()
    positions[0, 1] = float("inf")
    return s.api(lambda: _tiny_potential(s.fx).createSystem(_water_topology(s.fx), device="cpu",
                                                            fixedNeighborList=True, positions=positions))


@case("positions", "API", r"positions has 3 atoms but the topology has 24")
def case_sizing_positions_wrong_count(s):
    """fixed-capacity list sized from 3 positions for a 24-atom topology"""
    return s.api(lambda: _tiny_potential(s.fx).createSystem(_water_topology(s.fx), device="cpu",
                                                            fixedNeighborList=True,
                                                            positions=s.fx.water.positions[:3]))


@case("positions", "API", r"NaN|non-finite", flag=_non_finite)
def case_context_positions_nan(s):
    """Context positions with a NaN atom, energy asked for"""
    positions = s.fx.water.positions.copy()
    positions[2] = float("nan")
    return s.api(lambda: _energy_with_positions(s.fx, positions))


@case("positions", "API", r"NaN|non-finite|infinite", flag=_non_finite)
def case_context_positions_inf(s):
    """Context positions with an infinite coordinate, energy asked for"""
    positions = s.fx.water.positions.copy()
    positions[5, 0] = float("inf")
    return s.api(lambda: _energy_with_positions(s.fx, positions))


@case("positions", "API", r"NaN", types=lambda: _openmm_exception(), flag=_non_finite)
def case_context_positions_nan_step(s):
    """Context positions with a NaN atom, then two integrator steps and the energy"""
    positions = s.fx.water.positions.copy()
    positions[2] = float("nan")
    return s.api(lambda: _step_with_positions(s.fx, positions))


@case("positions", "API", r"NaN|non-finite|box", flag=_non_finite, types=lambda: _openmm_exception())
def case_context_box_nan(s):
    """Context periodic box vectors with a NaN component, energy asked for"""
    import openmm

    box = [openmm.Vec3(float("nan"), 0, 0), openmm.Vec3(0, 0.62, 0), openmm.Vec3(0, 0, 0.62)]
    return s.api(lambda: _energy_with_positions(s.fx, s.fx.water.positions, box))


@case("topology", "API", r"element")
def case_atom_without_element(s):
    """topology with an atom that has no element"""
    return s.api(lambda: _tiny_potential(s.fx).createSystem(_topology_with(s.fx, None), device="cpu"))


@case("topology", "API", r"no atoms|empty|0 atoms")
def case_empty_topology(s):
    """createSystem on a topology without atoms"""
    from openmm import app

    return s.api(lambda: _tiny_potential(s.fx).createSystem(app.Topology(), device="cpu"))


@case("topology", "API", r"999|out of range|index")
def case_mixed_atoms_out_of_range(s):
    """createMixedSystem(atoms=[0, 1, 2, 999]) on a 24-atom topology"""
    system = _mm_water_system(s.fx)
    return s.api(lambda: _tiny_potential(s.fx).createMixedSystem(_water_topology(s.fx), system, [0, 1, 2, 999],
                                                                 device="cpu"))


@case("topology", "API", r"atoms|empty|no atoms")
def case_mixed_atoms_empty(s):
    """createMixedSystem(atoms=[])"""
    system = _mm_water_system(s.fx)
    return s.api(lambda: _tiny_potential(s.fx).createMixedSystem(_water_topology(s.fx), system, [], device="cpu"))


@case("topology", "API", r"duplicate|twice|repeated|more than once")
def case_mixed_atoms_duplicated(s):
    """createMixedSystem(atoms=[0, 0, 1, 2]) (an atom listed twice)"""
    system = _mm_water_system(s.fx)
    return s.api(lambda: _tiny_potential(s.fx).createMixedSystem(_water_topology(s.fx), system, [0, 0, 1, 2],
                                                                 device="cpu"))


@case("topology", "API", r"negative|-1|out of range|index")
def case_mixed_atoms_negative(s):
    """createMixedSystem(atoms=[-1, 0, 1])"""
    system = _mm_water_system(s.fx)
    return s.api(lambda: _tiny_potential(s.fx).createMixedSystem(_water_topology(s.fx), system, [-1, 0, 1],
                                                                 device="cpu"))


# ----------------------------------------------------------------------------- export (CLI)


def _export(s: Sandbox, model: Any, *extra: Any, topology: Any = None) -> Attempt:
    return s.cli("export", model, "--topology", topology or s.fx.pdb, *extra, "-o", s.root / "out" / "force.pt")


@case("export", "CLI", r"does not exist")
def case_export_model_missing(s):
    """mace-lp export <missing .model>"""
    return _export(s, s.root / "missing.model")


@case("export", "CLI", r"Topology file .* does not exist")
def case_export_topology_missing(s):
    """mace-lp export --topology <missing file>"""
    return _export(s, s.fx.model, topology=s.root / "missing.pdb")


@case("export", "CLI", r"Cannot read .*PDB")
def case_export_topology_garbage(s):
    """mace-lp export --topology <binary garbage>"""
    return _export(s, s.fx.model, topology=s.fx.garbage)


@case("export", "CLI", r"--margin.*--fixed-capacity")
def case_export_margin_without_fixed_capacity(s):
    """mace-lp export --margin 0.2 (without --fixed-capacity)"""
    return _export(s, s.fx.model, "--margin", "0.2")


@case("export", "CLI", r"margin")
def case_export_margin_negative(s):
    """mace-lp export --fixed-capacity --margin -1"""
    return _export(s, s.fx.model, "--fixed-capacity", "--margin", "-1")


@case("export", "CLI", r"invalid choice: 'int8'")
def case_export_policy_unknown(s):
    """mace-lp export --policy int8"""
    return _export(s, s.fx.model, "--policy", "int8")


@case("export", "CLI", r"no CUDA device")
def case_export_device_cuda(s):
    """mace-lp export --device cuda on a machine without a GPU"""
    return _export(s, s.fx.model, "--device", "cuda")


@case("export", "CLI", r"no parameters for element.*Cl")
def case_export_wrong_element(s):
    """mace-lp export of a PDB with a Cl atom for an H/C/N/O model"""
    return _export(s, s.fx.model, topology=s.fx.pdb_chlorine)


@case("export", "CLI", r"is a directory")
def case_export_output_is_directory(s):
    """mace-lp export -o <an existing directory>"""
    target = s.root / "force_dir"
    target.mkdir()
    return s.cli("export", s.fx.model, "--topology", s.fx.pdb, "-o", target)


@case("export", "CLI", r"not a directory|is a file")
def case_export_output_parent_is_file(s):
    """mace-lp export -o <file>/force.pt (the parent is a file)"""
    blocker = s.text("blocker", "a file")
    return s.cli("export", s.fx.model, "--topology", s.fx.pdb, "-o", blocker / "force.pt")


# ----------------------------------------------------------------------------- config: model section (CLI)


@case("config", "CLI", r"unknown key 'ensembel'.*did you mean 'ensemble'")
def case_config_top_level_key_misspelt(s):
    """top-level key 'ensembel'"""
    return _simulate_cli(s, s.config({"ensembel": "npt"}))


@case("config", "CLI", r"unknown key 'model\.polcy'.*did you mean 'model\.policy'")
def case_config_model_key_misspelt(s):
    """[model] polcy = "fp32" """
    return _simulate_cli(s, s.config({"model.polcy": "fp32"}))


@case("config", "CLI", r"model\.policy = 'int8'")
def case_config_model_policy_unknown(s):
    """model.policy = "int8" """
    return _simulate_cli(s, s.config({"model.policy": "int8"}))


@case("config", "CLI", r"model\.backend = 'triton'")
def case_config_model_backend_unknown(s):
    """model.backend = "triton" """
    return _simulate_cli(s, s.config({"model.backend": "triton"}))


@case("config", "CLI", r"model\.path.*no such file")
def case_config_model_path_missing(s):
    """model.path = a file that does not exist"""
    return _simulate_cli(s, s.config({"model.path": str(s.root / "missing.model")}))


@case("config", "CLI", r"model\.path = 5.*wrong type")
def case_config_model_path_number(s):
    """model.path = 5"""
    return _simulate_cli(s, s.config({"model.path": 5}))


@case("config", "CLI", r"model\.kind = 'gaussian'")
def case_config_model_kind_unknown(s):
    """model.kind = "gaussian" """
    return _simulate_cli(s, s.config({"model.kind": "gaussian"}))


@case("config", "CLI", r"model\.neighbor_margin")
def case_config_neighbor_margin_negative(s):
    """model.neighbor_margin = -1"""
    return _simulate_cli(s, s.config({"model.neighbor_margin": -1.0}))


@case("config", "CLI", r"model\.cuda_graphs")
def case_config_cuda_graphs_word(s):
    """model.cuda_graphs = "yes" """
    return _simulate_cli(s, s.config({"model.cuda_graphs": "yes"}))


@case("config", "CLI", r"model\.neighbor_list = 'static'")
def case_config_neighbor_list_unknown(s):
    """model.neighbor_list = "static" """
    return _simulate_cli(s, s.config({"model.neighbor_list": "static"}))


@case("config", "CLI", r"model\.path.*directory")
def case_config_model_path_directory(s):
    """model.path = a directory"""
    return _simulate_cli(s, s.config({"model.path": str(s.fx.model_folder)}))


@case("config", "CLI", r"truncated|corrupt")
def case_config_model_truncated(s):
    """model.path = a truncated .model file"""
    return _simulate_cli(s, s.config({"model.path": str(s.fx.truncated_model)}))


@case("config", "CLI", r"not a PyTorch-saved model")
def case_config_model_not_a_zip(s):
    """model.path = a text file"""
    return _simulate_cli(s, s.config({"model.path": str(s.fx.text_model)}))


@case("config", "CLI", r"holds a dict")
def case_config_model_state_dict(s):
    """model.path = a torch-saved dict"""
    return _simulate_cli(s, s.config({"model.path": str(s.fx.state_dict_model)}))


@case("config", "CLI", r"\[model\] must be a table")
def case_config_section_is_a_value(s):
    """model = "tiny.model" (a value where a section belongs)"""
    return _simulate_cli(s, s.text("config.toml", f'model = "{s.fx.model}"\n'))


# ----------------------------------------------------------------------------- config: system


@case("config", "CLI", r"system\.water_molecules = 0")
def case_config_water_zero(s):
    """system.water_molecules = 0"""
    return _simulate_cli(s, s.config({"system.water_molecules": 0}))


@case("config", "CLI", r"system\.water_molecules = -3")
def case_config_water_negative(s):
    """system.water_molecules = -3"""
    return _simulate_cli(s, s.config({"system.water_molecules": -3}))


@case("config", "CLI", r"system\.water_molecules = 2\.5.*wrong type")
def case_config_water_fraction(s):
    """system.water_molecules = 2.5"""
    return _simulate_cli(s, s.config({"system.water_molecules": 2.5}))


@case("config", "CLI", r"water_molecules and system\.pdb are both set")
def case_config_water_and_pdb(s):
    """system.water_molecules and system.pdb both set"""
    return _simulate_cli(s, s.config({"system.pdb": str(s.fx.pdb)}))


@case("config", "CLI", r"system\.density_g_cm3 = 0")
def case_config_density_zero(s):
    """system.density_g_cm3 = 0"""
    return _simulate_cli(s, s.config({"system.density_g_cm3": 0.0}))


@case("config", "CLI", r"system\.density_g_cm3 = 'dense'")
def case_config_density_word(s):
    """system.density_g_cm3 = "dense" """
    return _simulate_cli(s, s.config({"system.density_g_cm3": "dense"}))


@case("config", "CLI", r"system\.structure_seed = -1")
def case_config_structure_seed_negative(s):
    """system.structure_seed = -1"""
    return _simulate_cli(s, s.config({"system.structure_seed": -1}))


@case("config", "CLI", r"system\.pdb.*no such file")
def case_config_pdb_missing(s):
    """system.pdb = a file that does not exist"""
    return _simulate_cli(s, s.config({"system.water_molecules": DROP, "system.pdb": str(s.root / "no.pdb")}))


@case("config", "CLI", r"system\.state.*no such file")
def case_config_state_missing(s):
    """system.state = a file that does not exist"""
    return _simulate_cli(s, s.config({"system.state": str(s.root / "no.xml")}))


# ----------------------------------------------------------------------------- config: integrator, barostat


@case("config", "CLI", r"integrator\.timestep_fs = 0")
def case_config_timestep_zero(s):
    """integrator.timestep_fs = 0"""
    return _simulate_cli(s, s.config({"integrator.timestep_fs": 0.0}))


@case("config", "CLI", r"integrator\.timestep_fs = -0\.5")
def case_config_timestep_negative(s):
    """integrator.timestep_fs = -0.5"""
    return _simulate_cli(s, s.config({"integrator.timestep_fs": -0.5}))


@case("config", "CLI", r"integrator\.timestep_fs = 50")
def case_config_timestep_huge(s):
    """integrator.timestep_fs = 50"""
    return _simulate_cli(s, s.config({"integrator.timestep_fs": 50.0}))


@case("config", "CLI", r"integrator\.timestep_fs = nan")
def case_config_timestep_nan(s):
    """integrator.timestep_fs = nan"""
    return _simulate_cli(s, s.config({"integrator.timestep_fs": float("nan")}))


@case("config", "CLI", r"integrator\.timestep_fs = True.*wrong type")
def case_config_timestep_bool(s):
    """integrator.timestep_fs = true"""
    return _simulate_cli(s, s.config({"integrator.timestep_fs": True}))


@case("config", "CLI", r"integrator\.temperature_K = -300")
def case_config_temperature_negative(s):
    """integrator.temperature_K = -300"""
    return _simulate_cli(s, s.config({"integrator.temperature_K": -300.0}))


@case("config", "CLI", r"integrator\.temperature_K = '300K'.*wrong type")
def case_config_temperature_with_unit(s):
    """integrator.temperature_K = "300K" """
    return _simulate_cli(s, s.config({"integrator.temperature_K": "300K"}))


@case("config", "CLI", r"integrator\.friction_per_ps = 0")
def case_config_friction_zero(s):
    """integrator.friction_per_ps = 0"""
    return _simulate_cli(s, s.config({"integrator.friction_per_ps": 0.0}))


@case("config", "CLI", r"\[integrator\] must be a table")
def case_config_integrator_array(s):
    """integrator = [1, 2] (an array where a section belongs)"""
    return _simulate_cli(s, s.text("config.toml", "integrator = [1, 2]\n"))


@case("config", "CLI", r"barostat\.pressure_bar = -1")
def case_config_pressure_negative(s):
    """barostat.pressure_bar = -1"""
    return _simulate_cli(s, s.config({"barostat.pressure_bar": -1.0}))


@case("config", "CLI", r"barostat\.interval_steps = 0")
def case_config_barostat_interval_zero(s):
    """barostat.interval_steps = 0"""
    return _simulate_cli(s, s.config({"barostat.interval_steps": 0}))


@case("config", "CLI", r"barostat\.mode = 'semiisotropic'")
def case_config_barostat_mode_unknown(s):
    """barostat.mode = "semiisotropic" """
    return _simulate_cli(s, s.config({"barostat.mode": "semiisotropic"}))


@case("config", "CLI", r"barostat\.scale_molecules = 'yes'.*wrong type")
def case_config_scale_molecules_word(s):
    """barostat.scale_molecules = "yes" """
    return _simulate_cli(s, s.config({"barostat.scale_molecules": "yes"}))


# ----------------------------------------------------------------------------- config: run, output, guards


@case("config", "CLI", r"run\.seed = 0")
def case_config_seed_zero(s):
    """run.seed = 0 (OpenMM's 'pick one at random')"""
    return _simulate_cli(s, s.config({"run.seed": 0}))


@case("config", "CLI", r"run\.seed = 2147483648")
def case_config_seed_too_large(s):
    """run.seed = 2**31"""
    return _simulate_cli(s, s.config({"run.seed": 2**31}))


@case("config", "CLI", r"run\.seed = 'abc'.*wrong type")
def case_config_seed_word(s):
    """run.seed = "abc" """
    return _simulate_cli(s, s.config({"run.seed": "abc"}))


@case("config", "CLI", r"run\.production_steps = 0")
def case_config_production_zero(s):
    """run.production_steps = 0"""
    return _simulate_cli(s, s.config({"run.production_steps": 0}))


@case("config", "CLI", r"run\.production_steps = 1e\+?12.*wrong type|run\.production_steps = 1000000000000\.0")
def case_config_production_float(s):
    """run.production_steps = 1e12 (a float)"""
    return _simulate_cli(s, s.config({"run.production_steps": 1e12}))


@case("config", "CLI", r"run\.equilibration_steps = -1")
def case_config_equilibration_negative(s):
    """run.equilibration_steps = -1"""
    return _simulate_cli(s, s.config({"run.equilibration_steps": -1}))


@case("config", "CLI", r"run\.minimize_max_iterations = -1")
def case_config_minimize_iterations_negative(s):
    """run.minimize_max_iterations = -1"""
    return _simulate_cli(s, s.config({"run.minimize_max_iterations": -1}))


@case("config", "CLI", r"run\.minimize_tolerance_kJ_mol_nm = 0")
def case_config_minimize_tolerance_zero(s):
    """run.minimize_tolerance_kJ_mol_nm = 0"""
    return _simulate_cli(s, s.config({"run.minimize_tolerance_kJ_mol_nm": 0.0}))


@case("config", "CLI", r"run\.minimize = 'yes'.*wrong type")
def case_config_minimize_word(s):
    """run.minimize = "yes" """
    return _simulate_cli(s, s.config({"run.minimize": "yes"}))


@case("config", "CLI", r"output\.report_interval_steps = 0")
def case_config_report_interval_zero(s):
    """output.report_interval_steps = 0"""
    return _simulate_cli(s, s.config({"output.report_interval_steps": 0}))


@case("config", "CLI", r"output\.trajectory_interval_steps = 100.*production_steps")
def case_config_trajectory_interval_too_long(s):
    """output.trajectory_interval_steps = 100 > run.production_steps = 8"""
    return _simulate_cli(s, s.config({"output.trajectory_interval_steps": 100}))


@case("config", "CLI", r"output\.checkpoint_interval_steps = -5")
def case_config_checkpoint_interval_negative(s):
    """output.checkpoint_interval_steps = -5"""
    return _simulate_cli(s, s.config({"output.checkpoint_interval_steps": -5}))


@case("config", "CLI", r"output\.keep_checkpoints = 0")
def case_config_keep_checkpoints_zero(s):
    """output.keep_checkpoints = 0"""
    return _simulate_cli(s, s.config({"output.keep_checkpoints": 0}))


@case("config", "CLI", r"output\.reinitialize_on_checkpoint")
def case_config_reinitialize_word(s):
    """output.reinitialize_on_checkpoint = "sometimes" """
    return _simulate_cli(s, s.config({"output.reinitialize_on_checkpoint": "sometimes"}))


@case("config", "CLI", r"guards\.max_temperature_factor = 0\.5")
def case_config_max_temperature_factor_low(s):
    """guards.max_temperature_factor = 0.5"""
    return _simulate_cli(s, s.config({"guards.max_temperature_factor": 0.5}))


@case("config", "CLI", r"guards\.min_temperature_factor = 1\.5")
def case_config_min_temperature_factor_high(s):
    """guards.min_temperature_factor = 1.5"""
    return _simulate_cli(s, s.config({"guards.min_temperature_factor": 1.5}))


@case("config", "CLI", r"guards\.check_forces = 'maybe'.*wrong type")
def case_config_check_forces_word(s):
    """guards.check_forces = "maybe" """
    return _simulate_cli(s, s.config({"guards.check_forces": "maybe"}))


@case("config", "CLI", r"unknown key 'guards\.max_temperature'.*did you mean")
def case_config_guards_key_misspelt(s):
    """[guards] max_temperature = 3 (misspelt key)"""
    return _simulate_cli(s, s.config({"guards.max_temperature": 3.0}))


# ----------------------------------------------------------------------------- config: platform


@case("config", "CLI", r"platform\.name = 'Metal'")
def case_config_platform_unknown(s):
    """platform.name = "Metal" """
    return _simulate_cli(s, s.config({"platform.name": "Metal"}))


@case("config", "CLI", r"platform\.device = 'gpu'")
def case_config_device_unknown(s):
    """platform.device = "gpu" """
    return _simulate_cli(s, s.config({"platform.device": "gpu"}))


@case("config", "CLI", r"platform\.cpu_threads = -1")
def case_config_cpu_threads_negative(s):
    """platform.cpu_threads = -1"""
    return _simulate_cli(s, s.config({"platform.cpu_threads": -1}))


@case("config", "CLI", r"CUDA")
def case_config_platform_cuda_without_gpu(s):
    """platform.name = "CUDA" on a machine without a GPU"""
    return _simulate_cli(s, s.config({"platform.name": "CUDA", "platform.device": "auto"}))


@case("config", "CLI", r"platform\.name = 'Reference'.*platform\.device = 'cuda'")
def case_config_reference_with_cuda_device(s):
    """platform.name = "Reference" with platform.device = "cuda" """
    return _simulate_cli(s, s.config({"platform.device": "cuda"}))


@case("config", "CLI", r"platform\.properties\.Precision.*not a property of the Reference")
def case_config_property_not_of_platform(s):
    """[platform.properties] Precision = "double" on Reference (which has no such property)"""
    return _simulate_cli(s, s.config({"platform.properties": {"Precision": "double"}}))


@case("config", "CLI", r"platform\.properties\.Threads = 'x'")
def case_config_property_bad_value(s):
    """[platform.properties] Threads = "x" on the CPU platform"""
    return _simulate_cli(s, s.config({"platform.name": "CPU", "platform.properties": {"Threads": "x"}}))


@case("config", "CLI", r"platform\.properties\.Threads = True.*strings")
def case_config_property_bool(s):
    """[platform.properties] Threads = true"""
    return _simulate_cli(s, s.config({"platform.name": "CPU", "platform.properties": {"Threads": True}}))


# ----------------------------------------------------------------------------- config: files, ensembles


@case("config", "CLI", r"ensemble = 'nvp'.*npt")
def case_config_ensemble_unknown_in_file(s):
    """ensemble = "nvp" in the file"""
    return _simulate_cli(s, s.config({"ensemble": "nvp"}))


@case("config", "CLI", r"ensemble = 'nvt' but the command asks for 'npt'")
def case_config_ensemble_contradicts_command(s):
    """file says ensemble = "nvt", the command says npt"""
    return _simulate_cli(s, s.config({"ensemble": "nvt"}))


@case("config", "CLI", r"invalid choice: 'nvp'")
def case_command_ensemble_unknown(s):
    """mace-lp simulate nvp CONFIG"""
    return _simulate_cli(s, s.config(), ensemble="nvp")


@case("config", "CLI", r"not valid TOML")
def case_config_invalid_toml(s):
    """a config that is not valid TOML"""
    return _simulate_cli(s, s.text("config.toml", "[model\npath = 'x'\n"))


@case("config", "CLI", r"config file .* does not exist")
def case_config_file_missing(s):
    """CONFIG names a file that does not exist"""
    return _simulate_cli(s, s.root / "missing.toml")


@case("config", "CLI", r"is a directory")
def case_config_file_is_directory(s):
    """CONFIG names a directory"""
    folder = s.root / "configs"
    folder.mkdir()
    return _simulate_cli(s, folder)


@case("config", "CLI", r"config\.toml.*(UTF-8|utf-8|text|TOML)")
def case_config_binary_garbage(s):
    """CONFIG is binary garbage (not UTF-8)"""
    return _simulate_cli(s, s.text("config.toml", b"\xff\xfe\x00\x81 garbage \x80\n"))


@case("config", "CLI", r"needs a periodic box")
def case_config_npt_without_box(s):
    """npt with a PDB that has no CRYST1 box"""
    return _simulate_cli(s, s.config({"system.water_molecules": DROP, "system.pdb": str(s.fx.pdb_no_box)}))


# ----------------------------------------------------------------------------- --set


@case("--set", "CLI", r"--set 'integrator\.timestep_fs': expected KEY=VALUE")
def case_set_without_equals(s):
    """--set integrator.timestep_fs (no '=')"""
    return _simulate_cli(s, s.config(), "--set", "integrator.timestep_fs")


@case("--set", "CLI", r"key before '=' is empty")
def case_set_empty_key(s):
    """--set =5"""
    return _simulate_cli(s, s.config(), "--set", "=5")


@case("--set", "CLI", r"'seed' is a value, not a table|run\.seed = \{'x': 1\} has the wrong type")
def case_set_value_as_table(s):
    """--set run.seed.x=1 (run.seed is a value)"""
    return _simulate_cli(s, s.config(), "--set", "run.seed.x=1")


@case("--set", "CLI", r"unknown key 'integrater'.*did you mean 'integrator'")
def case_set_unknown_section(s):
    """--set integrater.timestep_fs=1 (misspelt section)"""
    return _simulate_cli(s, s.config(), "--set", "integrater.timestep_fs=1")


@case("--set", "CLI", r"unknown key 'integrator\.timestep'.*did you mean 'integrator\.timestep_fs'")
def case_set_misspelt_key(s):
    """--set integrator.timestep=1 (misspelt key)"""
    return _simulate_cli(s, s.config(), "--set", "integrator.timestep=1")


@case("--set", "CLI", r"\[run\] must be a table")
def case_set_section_as_value(s):
    """--set run=5"""
    return _simulate_cli(s, s.config(), "--set", "run=5")


@case("--set", "CLI", r"integrator\.timestep_fs = 'abc'.*wrong type")
def case_set_word_for_number(s):
    """--set integrator.timestep_fs=abc"""
    return _simulate_cli(s, s.config(), "--set", "integrator.timestep_fs=abc")


@case("--set", "CLI", r"platform\.properties\.Precision.*Reference")
def case_set_platform_property(s):
    """--set platform.properties.Precision=quad on Reference"""
    return _simulate_cli(s, s.config(), "--set", "platform.properties.Precision=quad")


# ----------------------------------------------------------------------------- structure files


@case("structure", "CLI", r"system\.pdb.*cannot be read")
def case_structure_pdb_garbage(s):
    """system.pdb = binary garbage"""
    return _simulate_cli(s, s.config({"system.water_molecules": DROP, "system.pdb": str(s.fx.garbage)}))


@case("structure", "CLI", r"non-finite coordinates")
def case_structure_pdb_nan(s):
    """system.pdb with a NaN coordinate"""
    return _simulate_cli(s, s.config({"system.water_molecules": DROP, "system.pdb": str(s.fx.pdb_nan)}))


@case("structure", "CLI", r"no element|element")
def case_structure_pdb_unknown_element(s):
    """system.pdb with an atom of element 'XX'"""
    return _simulate_cli(s, s.config({"system.water_molecules": DROP, "system.pdb": str(s.fx.pdb_unknown_element)}))


@case("structure", "CLI", r"no parameters for element.*Cl")
def case_structure_pdb_element_not_in_model(s):
    """system.pdb with a Cl atom for an H/C/N/O model"""
    return _simulate_cli(s, s.config({"system.water_molecules": DROP, "system.pdb": str(s.fx.pdb_chlorine)}))


@case("structure", "CLI", r"no atoms|cannot be read|empty")
def case_structure_pdb_empty(s):
    """system.pdb = an empty file"""
    return _simulate_cli(s, s.config({"system.water_molecules": DROP, "system.pdb": str(s.fx.empty_pdb)}))


@case("structure", "CLI", r"cannot be read|no atoms")
def case_structure_cif_garbage(s):
    """system.pdb = a .cif file that is not PDBx"""
    return _simulate_cli(s, s.config({"system.water_molecules": DROP, "system.pdb": str(s.fx.garbage_cif)}))


@case("structure", "CLI", r"overlap|too close|non-finite|guard|NaN|temperature|stopped",
      documented=r"^run/($|\.run\.lock$|config\.toml$|manifest\.json$|run\.log$|failure-)")
def case_structure_overlapping_atoms(s):
    """system.pdb with two oxygens at the same position"""
    return _simulate_cli(s, s.config({"system.water_molecules": DROP, "system.pdb": str(s.fx.pdb_overlap)}))


@case("structure", "CLI", r"not an OpenMM State XML")
def case_structure_state_not_xml(s):
    """system.state = a file that is not XML"""
    return _simulate_cli(s, s.config({"system.state": str(s.fx.state_not_xml)}))


@case("structure", "CLI", r"has 3 atoms but the structure .* has 24")
def case_structure_state_wrong_atoms(s):
    """system.state with 3 atoms for a 24-atom structure"""
    return _simulate_cli(s, s.config({"system.state": str(s.fx.state_wrong_atoms)}))


@case("structure", "CLI", r"holds a serialized System, not a State")
def case_structure_state_is_system(s):
    """system.state = a serialized System"""
    return _simulate_cli(s, s.config({"system.state": str(s.fx.state_system)}))


@case("structure", "CLI", r"non-finite|nan")
def case_structure_state_nan(s):
    """system.state with a NaN position"""
    return _simulate_cli(s, s.config({"system.state": str(s.fx.state_nan)}))


# ----------------------------------------------------------------------------- -o targets


@case("-o", "CLI", r"is a file, not a directory")
def case_output_is_file(s):
    """-o names a file"""
    s.out = s.text("run", "a file")
    return _simulate_cli(s, s.config())


@case("-o", "CLI", r"parent of it is a file|not a directory")
def case_output_parent_is_file(s):
    """-o <file>/run (a parent is a file)"""
    blocker = s.text("blocker", "a file")
    s.out = blocker / "run"
    return _simulate_cli(s, s.config())


@case("-o", "CLI", r"not empty and is not a run directory.*--overwrite")
def case_output_foreign_directory(s):
    """-o a directory of someone's own files (state.csv, notes.txt)"""
    s.out.mkdir()
    (s.out / "state.csv").write_text("my,own,data\n")
    (s.out / "notes.txt").write_text("keep me\n")
    return _simulate_cli(s, s.config())


@case("-o", "CLI", r"already holds a run.*--resume.*--overwrite")
def case_output_completed_run(s):
    """-o a completed run, neither --resume nor --overwrite"""
    s.copy_run(s.fx.completed)
    return _simulate_cli(s, s.config())


@case("-o", "CLI", r"being written by process \d+")
def case_output_locked_by_other_process(s):
    """--resume -o a run whose lock another live process holds"""
    s.copy_run(s.fx.interrupted)
    holder = _hold_lock(s.out)
    try:
        return _simulate_cli(s, s.config(), "--resume")
    finally:
        _release(holder)


@case("-o", "CLI", r"being written by process \d+")
def case_output_locked_overwrite(s):
    """--overwrite -o a run whose lock another live process holds"""
    s.copy_run(s.fx.interrupted)
    holder = _hold_lock(s.out)
    try:
        return _simulate_cli(s, s.config(), "--overwrite")
    finally:
        _release(holder)


@case("-o", "CLI", r"no permission.*another -o")
def case_output_read_only_directory(s):
    """-o an existing empty directory the process may not write (mode 555, real process)"""
    s.out.mkdir()
    s.out.chmod(0o555)
    return s.subprocess("simulate", "npt", s.config(), "-o", s.out, "--quiet", obey_permissions=True)


@case("-o", "CLI", r"no permission.*another -o")
def case_output_under_read_only_parent(s):
    """-o a new directory inside a folder the process may not write (mode 555, real process)"""
    parent = s.root / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    s.out = parent / "run"
    return s.subprocess("simulate", "npt", s.config(), "-o", s.out, "--quiet", obey_permissions=True)


@case("-o", "CLI", r"no permission|read-only|Permission denied")
def case_resume_read_only_run(s):
    """--resume of an interrupted run whose directory and files were made read-only (real process)"""
    s.copy_run(s.fx.interrupted)
    for path in [s.out, *s.out.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return s.subprocess("simulate", "npt", s.config(), "-o", s.out, "--quiet", "--resume", obey_permissions=True)


@case("-o", "API", r"is a file, not a directory")
def case_api_run_dir_is_file(s):
    """simulate(config, run_dir=<a file>)"""
    config = s.load()
    s.out = s.text("run", "a file")
    return _simulate(s, config)


@case("-o", "API", r"being written by")
def case_api_run_dir_locked(s):
    """simulate(config, run_dir, resume=True) while this process holds the directory's lock elsewhere"""
    from openmm_mace_lp.simulations.rundir import RunDirectory

    config = s.load()
    s.copy_run(s.fx.interrupted)
    with RunDirectory(s.out).lock():
        return _simulate(s, config, resume=True)


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process that takes the run directory's lock and keeps it until killed."""
    code = ("import sys, time\nfrom openmm_mace_lp.simulations.rundir import RunDirectory\n"
            "lock = RunDirectory(sys.argv[1]).lock(); lock.__enter__()\nprint('locked', flush=True)\n"
            "time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    if holder.stdout.readline().strip() != "locked":
        raise RuntimeError("the lock holder did not start")
    return holder


def _release(holder: subprocess.Popen) -> None:
    holder.kill()
    holder.wait()


# ----------------------------------------------------------------------------- --resume


@case("--resume", "CLI", r"--resume: .* holds no run \(it does not exist")
def case_resume_missing_directory(s):
    """simulate npt --resume -o <missing> (no CONFIG)"""
    return _simulate_cli(s, None, "--resume")


@case("--resume", "CLI", r"--resume: .* holds no run \(it is empty")
def case_resume_empty_directory(s):
    """simulate npt --resume -o <empty directory> (no CONFIG)"""
    s.out.mkdir()
    return _simulate_cli(s, None, "--resume")


@case("--resume", "CLI", r"--resume: .* is not a run directory")
def case_resume_foreign_directory(s):
    """simulate npt CONFIG --resume -o <a directory of someone's files>"""
    s.out.mkdir()
    (s.out / "results.csv").write_text("1,2,3\n")
    return _simulate_cli(s, s.config(), "--resume")


@case("--resume", "CLI", r"config\.toml is missing.*nothing was deleted")
def case_resume_without_config_toml(s):
    """--resume of a run whose config.toml was deleted"""
    s.copy_run(s.fx.interrupted)
    (s.out / "config.toml").unlink()
    return _simulate_cli(s, None, "--resume")


@case("--resume", "CLI", r"checkpoint\.json is damaged")
def case_resume_damaged_checkpoint_json(s):
    """--resume of a run whose checkpoint.json is not JSON"""
    s.copy_run(s.fx.interrupted)
    (s.out / "checkpoint.json").write_text("{ damaged")
    return _simulate_cli(s, None, "--resume")


@case("--resume", "CLI", r"none of the \d+ checkpoints .* is usable.*Nothing was deleted")
def case_resume_all_checkpoints_damaged(s):
    """--resume of a run whose every checkpoint file fails its SHA-256"""
    s.copy_run(s.fx.interrupted)
    for path in (s.out / "checkpoints").glob("*.chk"):
        path.write_bytes(b"damaged" + path.read_bytes()[7:])
    return _simulate_cli(s, None, "--resume")


@case("--resume", "CLI", r"differs from the run's config\.toml in integrator\.timestep_fs")
def case_resume_changed_timestep(s):
    """--resume with a CONFIG whose timestep differs from the run's"""
    s.copy_run(s.fx.interrupted)
    return _simulate_cli(s, s.config({"integrator.timestep_fs": 0.25}), "--resume")


@case("--resume", "CLI", r"is a npt run; resume it with `mace-lp simulate npt")
def case_resume_wrong_ensemble(s):
    """simulate nvt --resume -o <an npt run>"""
    s.copy_run(s.fx.interrupted)
    return _simulate_cli(s, None, "--resume", ensemble="nvt")


@case("--resume", "CLI", r"--resume and --overwrite contradict")
def case_resume_and_overwrite(s):
    """--resume --overwrite together"""
    s.copy_run(s.fx.interrupted)
    return _simulate_cli(s, s.config(), "--resume", "--overwrite")


@case("--resume", "CLI", r"has SHA-256 .* but the run started with")
def case_resume_other_model_file(s):
    """--resume with model.path pointing to a different model file"""
    s.copy_run(s.fx.interrupted)
    return _simulate_cli(s, s.config({"model.path": str(s.fx.other_model)}), "--resume")


@case("--resume", "CLI", r"run\.production_steps = 4 but .* already has 8 production steps")
def case_resume_fewer_steps_than_done(s):
    """--resume of a completed 8-step run with --set run.production_steps=4"""
    s.copy_run(s.fx.completed)
    return _simulate_cli(s, None, "--resume", "--set", "run.production_steps=4")


@case("--resume", "CLI", r"state\.csv is missing but the checkpoint")
def case_resume_output_deleted(s):
    """--resume of a run whose state.csv was deleted"""
    s.copy_run(s.fx.interrupted)
    (s.out / "state.csv").unlink()
    return _simulate_cli(s, None, "--resume")


@case("--resume", "CLI", r"trajectory\.dcd.*(truncated|bytes)")
def case_resume_trajectory_truncated(s):
    """--resume of a run whose trajectory.dcd is 100 bytes shorter than its checkpoint recorded"""
    s.copy_run(s.fx.interrupted)
    recorded = json.loads((s.out / "checkpoint.json").read_text())["latest"]["outputs"]["trajectory.dcd"]["bytes"]
    with open(s.out / "trajectory.dcd", "r+b") as handle:
        handle.truncate(recorded - 100)
    return _simulate_cli(s, None, "--resume")


@case("--resume", "CLI", r"state\.csv.*(bytes|truncated|modified)")
def case_resume_state_csv_truncated(s):
    """--resume of a run whose state.csv is shorter than its checkpoint recorded"""
    s.copy_run(s.fx.interrupted)
    recorded = json.loads((s.out / "checkpoint.json").read_text())["latest"]["outputs"]["state.csv"]
    with open(s.out / "state.csv", "r+b") as handle:
        handle.truncate(recorded - 5)
    return _simulate_cli(s, None, "--resume")


@case("--resume", "CLI", r"trajectory\.dcd.*(DCD|header)")
def case_resume_trajectory_not_dcd(s):
    """--resume of a run whose trajectory.dcd was overwritten with text"""
    s.copy_run(s.fx.interrupted)
    (s.out / "trajectory.dcd").write_text("not a DCD file\n" * 200)
    return _simulate_cli(s, None, "--resume")


@case("--resume", "CLI", r"--max-minutes 0\.0: give a positive number")
def case_max_minutes_zero(s):
    """--max-minutes 0"""
    return _simulate_cli(s, s.config(), "--max-minutes", "0")


@case("--resume", "CLI", r"--dry-run --resume: .*config\.toml not found")
def case_dry_run_resume_missing(s):
    """--dry-run --resume -o <missing>"""
    return _simulate_cli(s, None, "--resume", "--dry-run")


@case("--resume", "API", r"a config is needed to start a run")
def case_api_simulate_without_config(s):
    """simulate(None, <missing dir>) (no config, no resume)"""
    return _simulate(s, None)


# ----------------------------------------------------------------------------- API config objects


@case("config-api", "API", r"ensemble = 'nvp'")
def case_api_ensemble_set_on_object(s):
    """config.ensemble = 'nvp' set on the object, then simulate"""
    config = s.load()
    config.ensemble = "nvp"
    return _simulate(s, config)


@case("config-api", "API", r"run\.seed")
def case_api_seed_float(s):
    """config.run.seed = 1.5 set on the object, then simulate"""
    config = s.load()
    config.run.seed = 1.5
    return _simulate(s, config)


@case("config-api", "API", r"run\.production_steps")
def case_api_production_steps_float(s):
    """config.run.production_steps = 8.5 set on the object, then simulate"""
    config = s.load()
    config.run.production_steps = 8.5
    return _simulate(s, config)


@case("config-api", "API", r"water_molecules")
def case_api_water_molecules_string(s):
    """config.system.water_molecules = '8' set on the object, then simulate"""
    config = s.load()
    config.system.water_molecules = "8"
    return _simulate(s, config)


@case("config-api", "API", r"timestep_fs")
def case_api_timestep_string(s):
    """config.integrator.timestep_fs = '0.5' set on the object, then simulate"""
    config = s.load()
    config.integrator.timestep_fs = "0.5"
    return _simulate(s, config)


@case("config-api", "API", r"model\.policy = 5.*wrong type")
def case_api_config_from_dict_wrong_type(s):
    """config_from_dict({'model': {'policy': 5}})"""
    from openmm_mace_lp.simulations.config import config_from_dict

    return s.api(lambda: config_from_dict({"model": {"policy": 5}}))


@case("config-api", "API", r"list|KEY=VALUE.*run\.seed|string")
def case_api_overrides_string_not_list(s):
    """load_config(None, overrides='run.seed=2') (a string where a list of overrides belongs)"""
    from openmm_mace_lp.simulations.config import load_config

    return s.api(lambda: load_config(None, "run.seed=2", ensemble="npt"))


# ----------------------------------------------------------------------------- other commands


@case("cli", "CLI", r"invalid choice: 'simulte'")
def case_cli_unknown_command(s):
    """python -m openmm_mace_lp.cli simulte (misspelt command, real process)"""
    return s.subprocess("simulte", "npt", "-o", s.out)


@case("cli", "CLI", r"model\.policy = 'int8'|policy")
def case_run_policy_unknown(s):
    """mace-lp run --policy int8"""
    return s.cli("run", "--policy", "int8", "-o", s.out, "--quiet", "--max-minutes", "0.1")


@case("cli", "CLI", r"production_steps|steps")
def case_run_steps_zero(s):
    """mace-lp run --steps 0"""
    return s.cli("run", "--steps", "0", "-o", s.out, "--quiet", "--max-minutes", "0.1")


@case("cli", "CLI", r"production_steps|steps")
def case_run_steps_negative(s):
    """mace-lp run --steps -5"""
    return s.cli("run", "--steps", "-5", "-o", s.out, "--quiet", "--max-minutes", "0.1")


@case("cli", "CLI", r"tpu")
def case_run_device_unknown(s):
    """mace-lp run --device tpu"""
    return s.cli("run", "--device", "tpu", "-o", s.out, "--quiet", "--max-minutes", "0.1")


@case("cli", "CLI", r"model\.path.*no such file")
def case_run_model_missing(s):
    """mace-lp run --model <missing .model>"""
    return s.cli("run", "--model", s.root / "missing.model", "-o", s.out, "--quiet", "--max-minutes", "0.1")


@case("cli", "CLI", r"int8")
def case_arms_policy_unknown(s):
    """mace-lp arms CONFIG --policies fp32,int8"""
    return s.cli("arms", s.config(), "--policies", "fp32,int8", "-o", s.out, "--quiet")


@case("cli", "CLI", r"seed|abc")
def case_arms_seed_word(s):
    """mace-lp arms CONFIG --seeds 1,abc"""
    return s.cli("arms", s.config(), "--seeds", "1,abc", "-o", s.out, "--quiet")


@case("cli", "CLI", r"seed|0")
def case_arms_seed_zero(s):
    """mace-lp arms CONFIG --seeds 0"""
    return s.cli("arms", s.config(), "--seeds", "0", "-o", s.out, "--quiet")


@case("cli", "CLI", r"only|bf16/7|arm")
def case_arms_only_unknown_arm(s):
    """mace-lp arms CONFIG --policies fp32 --only bf16/7 (an arm not in the grid)"""
    return s.cli("arms", s.config(), "--policies", "fp32", "--only", "bf16/7", "-o", s.out, "--quiet")


@case("cli", "CLI", r"does not exist|not found|no run|missing")
def case_analyze_missing_directory(s):
    """mace-lp analyze <missing directory>"""
    return s.cli("analyze", s.root / "nowhere")


@case("cli", "CLI", r"manifest|not a run|state\.csv")
def case_analyze_foreign_directory(s):
    """mace-lp analyze <a directory of someone's files>"""
    folder = s.root / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a run\n")
    return s.cli("analyze", folder)


@case("cli", "CLI", r"is a file, not a directory")
def case_cli_output_is_file_subprocess(s):
    """python -m openmm_mace_lp.cli simulate npt CONFIG -o <a file> (real process)"""
    s.out = s.text("run", "a file")
    return s.subprocess("simulate", "npt", s.config(), "-o", s.out, "--quiet")


@case("cli", "CLI", r"unknown key 'run\.steps'.*(did you mean|Valid keys in \[run\])")
def case_cli_bad_key_subprocess(s):
    """python -m openmm_mace_lp.cli simulate npt CONFIG with [run] steps = 10 (real process)"""
    return s.subprocess("simulate", "npt", s.config({"run.steps": 10}), "-o", s.out, "--quiet")


# ----------------------------------------------------------------------------- report


OUTCOMES = ("clear", "flagged", "warned", "unclear", "silent", "setup-error")


def totals(results: Sequence[Result]) -> dict[str, Any]:
    counts = {outcome: sum(r.outcome == outcome for r in results) for outcome in OUTCOMES}
    return {
        "cases": len(results),
        "kinds": len({r.description for r in results}),
        "api": sum(r.interface == "API" for r in results),
        "cli": sum(r.interface == "CLI" for r in results),
        **counts,
        "clear_errors": counts["clear"],
        "silent_results": counts["silent"],
        "unclear_errors": counts["unclear"],
        "partial_files": sum(bool(r.partial) for r in results),
    }


def table(results: Sequence[Result]) -> str:
    lines = [f"{'#':>3} {'group':<10} {'if':<3} {'case':<42} {'outcome':<8} {'partial':<7} message"]
    for number, r in enumerate(results, 1):
        partial = str(len(r.partial)) if r.partial else "-"
        lines.append(f"{number:>3} {r.group:<10} {r.interface:<3} {r.name[:42]:<42} {r.outcome:<8} "
                     f"{partial:<7} {_short(r.message, 110)}")
    return "\n".join(lines)


def markdown(results: Sequence[Result], summary: dict[str, Any], meta: dict[str, Any]) -> str:
    out = [f"# Hostile inputs, {meta['date']} (CPU)", "",
           f"`python benchmarks/hostile_inputs.py` on {meta['machine']}, commit {meta['commit']}"
           f"{' (with uncommitted changes)' if meta['dirty'] else ''}; torch {meta['torch']}, "
           f"openmm {meta['openmm']}; {meta['seconds']:.0f} s.", "",
           "Each case gives one kind of bad input to the API or the CLI, in its own folder; the folder "
           "and the export cache are listed before and after the call. Outcomes: *clear* (our error "
           "type, naming the problem; on the CLI rc != 0, no traceback, one `error:` line), *flagged* "
           "(no error, but a non-finite result that cannot pass for a number), *warned*, *unclear* "
           "(error of another type, a traceback, or a message that does not name the problem), "
           "*silent* (accepted). *Partial files*: anything new, changed or removed in the case's "
           "folder or the cache (complete cache entries excepted).", "",
           "## Totals", "",
           "| cases | kinds | API | CLI | clear errors | flagged | warned | unclear errors | silent results | cases with partial files |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
           f"| {summary['cases']} | {summary['kinds']} | {summary['api']} | {summary['cli']} | "
           f"{summary['clear']} | {summary['flagged']} | {summary['warned']} | {summary['unclear']} | "
           f"{summary['silent']} | {summary['partial_files']} |", ""]
    problems = [r for r in results if r.outcome not in ("clear", "flagged") or r.partial]
    out += ["## Problems", ""]
    if not problems:
        out.append("None.")
    for r in problems:
        files = "; ".join(r.partial) if r.partial else "none"
        status = r.detail.get("manifest_status_after")
        after = f" (manifest status afterwards: {status})" if status and any("manifest.json" in f for f in r.partial) else ""
        then = f" Then: {_md(r.note, 300)}." if r.note else ""
        out.append(f"- **{r.name}** ({r.interface}, {r.description}): {r.outcome}: {_md(r.message, 400)}. "
                   f"Files: {_md(files, 600)}{after}.{then}")
    remarks = [r for r in results if r.note or r.documented]
    if remarks:
        out += ["", "## Notes", ""]
    for r in remarks:
        parts = ([r.note] if r.note else []) + \
                ([f"documented evidence of the failure, not counted: {', '.join(r.documented)}"] if r.documented else [])
        out.append(f"- **{r.name}**: {_md('; '.join(parts), 600)}.")
    out += ["", "## Every case", "", "| # | group | API/CLI | case | bad input | outcome | partial files | message |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for number, r in enumerate(results, 1):
        files = "<br>".join(r.partial) if r.partial else "-"
        out.append(f"| {number} | {r.group} | {r.interface} | {r.name} | {_md(r.description, 120)} | {r.outcome} | "
                   f"{_md(files, 400)} | {_md(r.message, 300)} |")
    return "\n".join(out) + "\n"


def _md(text: str, limit: int) -> str:
    return _short(text, limit).replace("|", "\\|")


def metadata(seconds: float) -> dict[str, Any]:
    import openmm
    import torch

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    return {"date": date.today().isoformat(), "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
            "commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain")),
            "torch": torch.__version__, "openmm": openmm.__version__, "python": platform.python_version(),
            "seconds": seconds}


def write_results(results: Sequence[Result], output: Path, seconds: float) -> tuple[Path, Path]:
    from openmm_mace_lp.atomic import atomic_write_json, atomic_write_text

    summary = totals(results)
    meta = metadata(seconds)
    json_path = output.with_suffix(".json")
    md_path = output.with_suffix(".md")
    atomic_write_json(json_path, {"schema": "openmm-mace-lp/hostile-inputs/1", "meta": meta, "totals": summary,
                                  "cases": [dataclasses.asdict(r) for r in results]})
    atomic_write_text(md_path, markdown(results, summary, meta))
    return json_path, md_path


# ----------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT,
                        help="results path without suffix (writes .json and .md)")
    parser.add_argument("-k", "--select", default=None, help="only cases whose name contains this")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    output = args.output.with_suffix("") if args.output.suffix in (".json", ".md") else args.output
    work = args.work or Path(tempfile.mkdtemp(prefix="hostile-inputs-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    fixtures = Fixtures(work)
    print(f"building fixtures in {work} ...", flush=True)
    fixtures.build()
    cases = [c for c in CASES if args.select is None or args.select in c.name]
    results = []
    for number, item in enumerate(cases, 1):
        result = run_case(item, fixtures, work / "cases")
        results.append(result)
        print(f"[{number:>3}/{len(cases)}] {item.name:<44} {result.outcome:<8} "
              f"{'partial' if result.partial else '':<7} {result.seconds:5.1f} s", flush=True)
    seconds = time.perf_counter() - start
    print()
    print(table(results))
    for result in results:
        if result.note:
            print(f"    note, {result.name}: {result.note}")
    summary = totals(results)
    print(f"\n{summary['cases']} cases ({summary['kinds']} kinds; {summary['api']} API, {summary['cli']} CLI): "
          f"clear errors {summary['clear']}, flagged {summary['flagged']}, warned {summary['warned']}, "
          f"unclear errors {summary['unclear']}, silent results {summary['silent']}, "
          f"cases with partial files {summary['partial_files']}; {seconds:.0f} s")
    json_path, md_path = write_results(results, output, seconds)
    print(f"wrote {json_path} and {md_path}")
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
