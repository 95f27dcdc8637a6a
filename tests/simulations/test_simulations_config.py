"""Config loading and validation: every mistake is named before any model work starts."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from openmm_mace_lp.simulations.config import (SimulationConfig, check_resume_changes, config_from_dict,
                                               load_config, parse_override, resolved, validate)
from openmm_mace_lp.simulations.run import simulate
from sim_helpers import tiny_config, tiny_settings


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_file_overrides_and_relative_paths(tmp_path, tiny_model):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "tiny.model").write_bytes(tiny_model.read_bytes())
    config_path = write(tmp_path / "run.toml", """
ensemble = "npt"
[model]
path = "m/tiny.model"
policy = "bf16"
[integrator]
timestep_fs = 1
[platform.properties]
Precision = "mixed"
""")
    config = load_config(config_path, ["run.production_steps=500", "model.backend=e3nn"], ensemble="npt")
    assert config.model.path == str((tmp_path / "m" / "tiny.model").resolve())
    assert config.model.policy == "bf16" and config.model.backend == "e3nn"
    assert config.integrator.timestep_fs == 1.0 and isinstance(config.integrator.timestep_fs, float)
    assert config.run.production_steps == 500
    assert config.platform.properties == {"Precision": "mixed"}


@pytest.mark.parametrize("settings, message", [
    (["integrator.timstep_fs=1"], r"unknown key 'integrator.timstep_fs' \(did you mean 'integrator.timestep_fs'\?\)"),
    (["thermostat.friction=1"], r"unknown key 'thermostat'"),
    (["run.production_steps=\"many\""], r"run.production_steps = 'many' has the wrong type: expected an integer"),
    (["run.production_steps=1.5"], r"run.production_steps = 1.5 has the wrong type"),
    (["integrator.timestep_fs=-1"], r"integrator.timestep_fs = -1.0: must be in \(0, 10\]"),
    (["integrator.temperature_K=0"], r"integrator.temperature_K = 0.0: must be a positive temperature"),
    (["integrator.friction_per_ps=-2"], r"integrator.friction_per_ps"),
    (["barostat.pressure_bar=-1"], r"barostat.pressure_bar = -1.0"),
    (["barostat.mode=\"sideways\""], r"barostat.mode = 'sideways' is not one of isotropic, anisotropic"),
    (["run.seed=0"], r"run.seed = 0: must be in 1..2147483647"),
    (["run.production_steps=0"], r"run.production_steps = 0: must be >= 1"),
    (["output.trajectory_interval_steps=100", "run.production_steps=10"],
     r"output.trajectory_interval_steps = 100: is longer than run.production_steps = 10"),
    (["output.checkpoint_interval_steps=0"], r"output.checkpoint_interval_steps = 0"),
    (["guards.min_temperature_factor=1.5"], r"guards.min_temperature_factor = 1.5"),
    (["model.policy=fp8"], r"model.policy = 'fp8' is not one of"),
    (["model.backend=\"jax\""], r"model.backend = 'jax'"),
    (["model.cuda_graphs=sometimes"], r"model.cuda_graphs = 'sometimes' is not one of auto, True, False"),
    (["model.compiler=\"aot\""], r"model.compiler = 'aot' is not one of torchscript, inductor"),
    (["model.compiler=\"inductor\"", "model.neighbor_list=\"dynamic\""],
     r"model.compiler = 'inductor': compiles for fixed shapes"),
    (["model.compiler=\"inductor\"", "model.backend=\"cueq-fused\""],
     r"model.compiler = 'inductor': runs with model.backend e3nn only"),
    (["platform.name=Metal"], r"platform.name = 'Metal'"),
    (["platform.device=gpu0"], r"platform.device = 'gpu0'"),
    (["system.pdb=water.pdb"], r"system.water_molecules and system.pdb are both set"),
    (["platform.properties.Precision=true"], r"platform.properties.Precision = True"),
])
def test_bad_values_name_the_key(tiny_model, settings, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, tiny_settings(tiny_model) + settings, ensemble="npt")


def test_missing_files_name_the_key(tmp_path, tiny_model):
    with pytest.raises(FileNotFoundError, match=r"model.path = '.*nowhere.model': no such file"):
        load_config(None, tiny_settings(tiny_model) + [f"model.path={tmp_path}/nowhere.model"])
    with pytest.raises(FileNotFoundError, match=r"system.pdb = '.*absent.pdb': no such file"):
        load_config(None, tiny_settings(tiny_model, system__water_molecules=None) +
                    [f"system.pdb={tmp_path}/absent.pdb"])
    with pytest.raises(FileNotFoundError, match="config file"):
        load_config(tmp_path / "absent.toml")


def test_file_errors(tmp_path, tiny_model):
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(write(tmp_path / "bad.toml", "ensemble = \n"))
    with pytest.raises(ValueError, match=r"says ensemble = 'nvt' but the command asks for 'npt'"):
        load_config(write(tmp_path / "nvt.toml", 'ensemble = "nvt"\n'), ensemble="npt")
    with pytest.raises(ValueError, match=r"\[run\] must be a table"):
        config_from_dict({"run": 3})
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_override("integrator.timestep_fs")


def test_overrides_parse_toml_values_and_bare_strings():
    assert parse_override("integrator.timestep_fs=1.0") == (["integrator", "timestep_fs"], 1.0)
    assert parse_override("run.minimize=false") == (["run", "minimize"], False)
    assert parse_override("model.path=my.model") == (["model", "path"], "my.model")
    assert parse_override('model.policy="bf16"') == (["model", "policy"], "bf16")
    assert parse_override("platform.properties.DeviceIndex=0") == (["platform", "properties", "DeviceIndex"], 0)


def test_cuda_graphs_auto_leaves_the_choice_to_the_plug_in(tiny_model):
    from openmm_mace_lp.simulations.openmm_setup import cuda_graphs_argument

    config = load_config(None, tiny_settings(tiny_model), ensemble="nvt")
    assert config.model.cuda_graphs == "auto"
    assert load_config(None, tiny_settings(tiny_model) + ["model.cuda_graphs=false"], ensemble="nvt").model.cuda_graphs is False
    assert cuda_graphs_argument("auto", "auto") is None and cuda_graphs_argument(True, "fixed") is True
    assert cuda_graphs_argument("auto", "dynamic") is False and cuda_graphs_argument(True, "dynamic") is False


def test_resolved_config_round_trips_through_toml(tiny_model):
    config = resolved(tiny_config(tiny_model, "npt", platform__properties__Threads="1"))
    assert config.platform.name == "Reference" and config.platform.device == "cpu"
    assert config.model.backend == "e3nn" and config.system.water_molecules == 8
    again = config_from_dict(tomllib.loads(config.to_toml()))
    assert again == config


def test_unset_keys_are_left_out_of_the_toml(tiny_model):
    config = resolved(tiny_config(tiny_model, "npt"))
    assert config.system.pdb is None
    data = tomllib.loads(config.to_toml())
    assert "pdb" not in data["system"] and data["system"]["water_molecules"] == 8


def test_resume_may_only_extend(tiny_model):
    stored = resolved(tiny_config(tiny_model, "npt"))
    longer = stored.copy()
    longer.run.production_steps *= 2
    assert check_resume_changes(stored, longer) == ["run.production_steps"]
    hotter = stored.copy()
    hotter.integrator.temperature_K = 350.0
    with pytest.raises(ValueError, match="integrator.temperature_K"):
        check_resume_changes(stored, hotter)


def test_errors_come_before_any_model_work(tmp_path, tiny_model):
    """A structure that cannot run NPT fails before the model is exported or a manifest exists."""
    pdb = write(tmp_path / "mol.pdb", "HETATM    1  O   HOH A   1       0.000   0.000   0.000  1.00  0.00           O\n"
                                      "HETATM    2  H1  HOH A   1       0.957   0.000   0.000  1.00  0.00           H\n"
                                      "HETATM    3  H2  HOH A   1      -0.240   0.927   0.000  1.00  0.00           H\nEND\n")
    config = load_config(None, tiny_settings(tiny_model, system__water_molecules=None) +
                         [f"system.pdb={pdb}"], ensemble="npt")
    with pytest.raises(ValueError, match="needs a periodic box"):
        simulate(config, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "manifest.json").exists()
    with pytest.raises(ValueError, match="integrator.timestep_fs"):
        bad = SimulationConfig()
        bad.model.path = str(tiny_model)
        bad.integrator.timestep_fs = 50.0
        simulate(bad, tmp_path / "run2", quiet=True)
    assert not (tmp_path / "run2").exists()


def test_barostats_are_seeded_and_anisotropic_on_request(tiny_model):
    import openmm

    from openmm_mace_lp.simulations.openmm_setup import create_barostat

    config = tiny_config(tiny_model, "npt", run__seed=7, barostat__interval_steps=13)
    iso = create_barostat(config)
    assert isinstance(iso, openmm.MonteCarloBarostat)
    assert iso.getRandomNumberSeed() == 7 and iso.getFrequency() == 13
    config.barostat.mode = "anisotropic"
    aniso = create_barostat(config)
    assert isinstance(aniso, openmm.MonteCarloAnisotropicBarostat)
    assert aniso.getScaleX() and aniso.getScaleY() and aniso.getScaleZ() and aniso.getRandomNumberSeed() == 7


@pytest.mark.parametrize("name", ["water_1029_npt.toml", "water_192_nve.toml", "water_192_nvt_cpu.toml"])
def test_example_configs_are_valid(name, tiny_model):
    from openmm_mace_lp.simulations.config import validate

    path = Path(__file__).resolve().parents[2] / "simulations" / "examples" / name
    config = config_from_dict(tomllib.loads(path.read_text()), str(path))
    config.model.path = str(tiny_model)  # the embedded model may not be installed yet
    validate(config)


def test_a_config_that_is_a_directory_or_not_text_is_named_as_such(tmp_path, tiny_model):
    with pytest.raises(ValueError, match="is a directory"):
        load_config(tmp_path)
    garbage = tmp_path / "garbage.toml"
    garbage.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match="not UTF-8 text"):
        load_config(garbage)
    config = tiny_config(tiny_model, "nvt")
    config.model.path = str(tmp_path)
    with pytest.raises(ValueError, match="model.path .* is a directory"):
        validate(config)


@pytest.mark.parametrize("section, key, value", [("run", "seed", 1.5), ("run", "production_steps", 8.5),
                                                 ("system", "water_molecules", "8")])
def test_values_set_on_the_object_are_type_checked(tiny_model, section, key, value):
    config = tiny_config(tiny_model, "nvt")
    setattr(getattr(config, section), key, value)
    with pytest.raises(ValueError, match=f"{section}.{key} = .* has the wrong type"):
        validate(config)


def test_one_override_string_instead_of_a_list_is_refused():
    with pytest.raises(TypeError, match=r"pass \['run.seed=2'\]"):
        load_config(None, "run.seed=2")


def test_an_unknown_key_is_named_where_it_was_written(tmp_path, tiny_model):
    """A misspelt key of the file is reported under the file's name, one of --set under --set."""
    config_path = tmp_path / "run.toml"
    config_path.write_text('ensemble = "npt"\n[integrator]\ntimestep_fs = 1.0\n')
    with pytest.raises(ValueError, match=r"^--set: unknown key 'integrator.timstep_fs'"):
        load_config(config_path, ["integrator.timstep_fs=1"])
    config_path.write_text('ensemble = "npt"\n[integrator]\ntimstep_fs = 1.0\n')
    with pytest.raises(ValueError, match=rf"^{re.escape(str(config_path))}: unknown key 'integrator.timstep_fs'"):
        load_config(config_path, ["run.production_steps=10"])
