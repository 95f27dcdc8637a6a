"""The command line: simulate / arms / run parse, fail with named keys, and run end to end."""
from __future__ import annotations

import json
import tomllib

from openmm_mace_lp.cli import build_parser, main
from openmm_mace_lp.simulations.config import config_from_dict


def test_parsers():
    parser = build_parser()
    args = parser.parse_args(["simulate", "npt", "water.toml", "--set", "run.seed=2", "--resume", "-o", "out"])
    assert (args.ensemble, args.config, args.set, args.resume, args.output) == \
        ("npt", "water.toml", ["run.seed=2"], True, "out")
    args = parser.parse_args(["arms", "water.toml", "-o", "arms", "--only", "bf16/1"])
    assert args.policies == "fp64,fp32,bf16,fp16" and args.seeds == "1" and args.only == ["bf16/1"]
    args = parser.parse_args(["run"])
    assert args.output is None and args.policy == "fp32" and args.device == "auto" and callable(args.func)


def test_bad_config_is_reported_without_traceback(tmp_path, tiny_model, capsys):
    code = main(["simulate", "nvt", "--set", f"model.path={tiny_model}", "--set", "integrator.timestep_fs=-1",
                 "-o", str(tmp_path / "run")])
    assert code == 1
    assert "integrator.timestep_fs = -1.0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_dry_run_prints_the_resolved_config(tmp_path, tiny_model, capsys):
    assert main(["simulate", "npt", "--set", f"model.path={tiny_model}", "--set", "platform.device=cpu",
                 "--dry-run", "-o", str(tmp_path / "run")]) == 0
    config = config_from_dict(tomllib.loads(capsys.readouterr().out))
    assert config.ensemble == "npt" and config.platform.name == "Reference" and config.model.backend == "e3nn"
    assert not (tmp_path / "run").exists()


def test_run_main_job_end_to_end(tmp_path, tiny_model, capsys, monkeypatch):
    """`mace-lp run` with a tiny model instead of the embedded one, and a few steps; run a
    second time it writes runs/main-2 instead of failing."""
    monkeypatch.chdir(tmp_path)
    command = ["run", "--model", str(tiny_model), "--device", "cpu", "--policy", "fp64", "--steps", "4",
               "--set", "system.water_molecules=8", "--set", "run.equilibration_steps=2",
               "--set", "model.backend=e3nn", "--set", "guards.max_temperature_factor=10",
               "--set", "run.minimize_max_iterations=2", "--quiet"]
    out = tmp_path / "runs" / "main"
    code = main(command)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "ns/day" in printed and "temperature" in printed and "density" in printed and "runs/main" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ensemble"] == "npt" and manifest["policy"] == "fp64" and manifest["status"] == "completed"
    before = (out / "manifest.json").read_text()
    assert main(command) == 0
    captured = capsys.readouterr()
    assert "runs/main already holds a run (status 'completed'" in captured.err and "runs/main-2" in captured.err
    assert json.loads((tmp_path / "runs" / "main-2" / "manifest.json").read_text())["status"] == "completed"
    assert (out / "manifest.json").read_text() == before
    assert main(["run", "--model", str(tiny_model), "--device", "cpu", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
