"""The training recipe: the mace command is valid, offline and has each teacher's architecture."""

from pathlib import Path

import pytest

from openmm_mace_lp.systems.recipes import train_water as T


def _parsed(tmp_path, target=T.DEFAULT_TARGET):
    from openmm_mace_lp.upstream import import_mace

    import_mace()  # before e3nn
    from mace.tools import build_default_arg_parser

    args = T.mace_arguments(T.DATA_DIR, tmp_path, "cpu", target.hyperparameters, target)
    return build_default_arg_parser().parse_args(args)


def test_the_gfn2_target_keeps_its_architecture(tmp_path):
    a = _parsed(tmp_path, T.TARGETS["gfn2-xtb"])
    assert a.name == "mace-water-gfn2" and a.hidden_irreps == "64x0e+64x1o"
    assert a.max_ell == 3 and a.E0s == "isolated"
    assert Path(a.train_file).name == "water_gfn2_train.extxyz"


def test_mace_accepts_the_command_and_architecture(tmp_path):
    a = _parsed(tmp_path)
    assert a.name == "mace-water-amoeba"
    assert a.num_interactions == 2
    assert a.hidden_irreps == "32x0e+32x1o"
    assert a.max_ell == 2 and a.correlation == 3
    assert a.r_max == 5.0 and a.num_radial_basis == 8
    assert a.radial_MLP == "[64,64,64]"
    assert a.E0s == "{1:0.0,8:0.0}" and a.loss == "stress" and a.compute_stress
    assert a.ema and a.swa and a.start_swa < a.max_num_epochs
    assert a.energy_key == "REF_energy" and a.forces_key == "REF_forces" and a.stress_key == "REF_stress"
    assert a.seed == T.SEED and a.default_dtype == "float64"
    # nothing that downloads: no foundation model, no wandb
    assert a.foundation_model is None and not a.wandb
    for f in (a.train_file, a.valid_file, a.test_file):  # decompressed copies in the work dir
        assert Path(f).name.startswith(T.PREFIX) and f.endswith(".extxyz")
        assert Path(f).parent == tmp_path / "data"


def test_print_command_and_overrides(capsys):
    T.main(["--print-command", "--device", "cpu", "--epochs", "8", "--set", "batch_size=4",
            "--set", "enable_cueq=true"])
    out = capsys.readouterr().out
    assert "mace.cli.run_train" in out
    assert "--max_num_epochs=8" in out and "--start_stage_two=3" in out
    assert "--batch_size=4" in out and "--enable_cueq=True" in out


@pytest.mark.slow
def test_smoke_training_on_cpu(tmp_path):
    """Tiny model, one epoch, a few frames of the real data: the full recipe runs."""
    if not (T.DATA_DIR / f"{T.PREFIX}_train.extxyz.xz").exists():
        pytest.skip("data not generated yet")
    T.main(["--smoke", "--device", "cpu", "--work-dir", str(tmp_path)])
    import json

    err = json.loads((tmp_path / "smoke_models" / f"{T.MODEL_NAME}.test_errors.json").read_text())
    assert err["overall"]["frames"] > 0
    assert (tmp_path / "smoke_models" / f"{T.MODEL_NAME}.md").exists()


def test_a_closed_loop_gives_the_card_its_teachers_densities():
    summary = {"file": "closed_loop_x.json", "card": "NVIDIA H200", "temperatures": [
        {"temperature_K": 300, "teacher": {"density_g_cm3": 1.005, "density_sem": 0.0023}, "model": {}},
        {"temperature_K": 260, "teacher": None},  # the teacher's run is missing: no target at 260 K
        {"temperature_K": 350, "teacher": {"density_g_cm3": 0.978}}]}
    assert T.teacher_densities(summary) == [
        {"temperature_K": 300.0, "density_g_cm3": 1.005, "sem": 0.0023,
         "source": "benchmarks/results/closed_loop_x.json", "card": "NVIDIA H200"},
        {"temperature_K": 350.0, "density_g_cm3": 0.978, "sem": 0.0,
         "source": "benchmarks/results/closed_loop_x.json", "card": "NVIDIA H200"}]


def test_the_card_says_which_stages_of_own_run_frames_a_model_has_not_learnt():
    """A stage is not learnt when the model sampled it itself or when its training did not see
    it (``trained_on_stages``, stored at training time); without that record only the first rule."""
    from openmm_mace_lp.systems.recipes.train_water import _sampled_stage_lines

    me, earlier, later = "a" * 64, "b" * 64, "c" * 64
    manifest = {"counts": {}, **{f"model_npt_stage_{m[:8]}": {"sampling_models_sha256": [m], "frames_added": {"train": 3}}
                                 for m in (me, earlier, later)}}
    not_learnt = "has not learnt from them"
    lines = _sampled_stage_lines(manifest, me, trained_on=[f"model_npt_stage_{earlier[:8]}"])
    assert [not_learnt in line for line in lines] == [True, False, True]  # aaaa (own), bbbb, cccc (later)
    lines = _sampled_stage_lines(manifest, me)
    assert [not_learnt in line for line in lines] == [True, False, False]
