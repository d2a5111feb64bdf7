"""The study drivers (espnet-lowrank compare, budget-study): what they plan, how they run the recipe's
run.sh, and, end to end on the tiny recipe, that they train, decode and tabulate, from a non-editable
install too."""

import json
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import pytest
import yaml

from tiny_recipe import ROOT, SPEED_PERTURB, TINY_DATA, recipe_dir, run

CONF = ROOT / "tests" / "conf"


def installed_without_the_checkout(tmp_path: Path) -> Path:
    """A fresh venv with this project pip-installed (not editable); the heavy dependencies come from the
    test's own venv, on its path after the fresh venv's own site-packages. Returns the venv's bin dir."""
    venv = tmp_path / "venv"
    python = str(venv / "bin" / "python")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # a site dir, so that its own .pth files (setuptools' distutils shim) work; it comes after this venv's
    (Path(purelib) / "borrowed_dependencies.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(ROOT)], check=True, cwd=tmp_path)
    where = subprocess.run([python, "-c", "import espnet_lowrank; print(espnet_lowrank.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()
    assert where.startswith(purelib), where  # the installed copy, not the checkout
    return venv / "bin"


@pytest.mark.slow
def test_compare_trains_decodes_and_tabulates_two_configs_from_a_non_editable_install(pipeline, tmp_path):
    """`pip install .` then `espnet-lowrank compare --recipe_dir ...`, in the shared tiny recipe, whose data
    stages 1-5 have prepared: compare redoes none of them."""
    bin_dir = installed_without_the_checkout(tmp_path)
    second = tmp_path / "tiny_lowrank_other_ranks.yaml"  # a config from outside the project
    second.write_text((CONF / "tiny_lowrank_other_ranks.yaml").read_text())
    out = tmp_path / "results" / "compare"
    result = subprocess.run(
        [str(bin_dir / "espnet-lowrank"), "compare", "--recipe_dir", str(pipeline["recipe"]),
         "--configs", str(CONF / "tiny_dense.yaml"), str(second), "--out", str(out), "--", *TINY_DATA,
         *SPEED_PERTURB, "--asr_args", "--max_epoch 2 --batch_size 8 --batch_type unsorted"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stage 1: already done" in result.stderr and "stage 5: already done" in result.stderr
    table = out.with_suffix(".md").read_text().splitlines()
    assert len(table) == 4 and "`tiny_dense.yaml`" in table[2]
    assert all(len(row.split("|")) == 11 for row in table[2:])
    assert "test WER %" in table[0] and table[2].split("|")[8].strip() == "+0%"  # WER against the first
    assert table[2].split("|")[6].strip() == "1.00×"  # training time against the first config
    runs = json.loads(out.with_suffix(".json").read_text())
    assert [len(r["runs"]) for r in runs] == [1, 1] and runs[0]["runs"][0]["epochs"] == [1, 2]
    assert runs[1]["runs"][0]["train_seconds"] > 0
    # parameters are counted from each run's saved config (where a budgeted warm-up's ranks are)
    from espnet_lowrank.model_config import build_model, count_parameters

    tokens = yaml.safe_load((pipeline["recipe"] / "exp" / "asr_tiny_dense" / "config.yaml").read_text())["token_list"]
    assert runs[1]["runs"][0]["params"] == count_parameters(build_model(second, token_list=tokens))
    assert runs[1]["runs"][0]["width"] == yaml.safe_load(second.read_text())["encoder_conf"]["output_size"]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert (out.parent / "compare_wer.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_says_how_far_one_seed_strays_from_its_mean_and_plots_wer_against_parameters(tmp_path):
    from espnet_lowrank.studies.compare_table import Run, _wer_label, markdown, plot_wer

    def run(seed, params, wer):
        return Run(tag=f"x_seed{seed}", seed=seed, params=params, width=params // 20_000, epochs=[1],
                   valid_acc=[0.5], valid_loss=[1.0], train_seconds=60.0, wer=wer, cer=wer / 3)

    rows = [{"name": "dense.yaml", "runs": [run(1, 4_000_000, 25.0), run(2, 4_000_000, 27.0)]},
            {"name": "lowrank.yaml", "runs": [run(1, 2_000_000, 28.0), run(2, 2_000_000, 31.6),
                                              run(3, 2_000_000, 29.0)]},
            {"name": "one_seed.yaml", "runs": [run(1, 3_000_000, 40.0)]}]
    table = markdown(rows, test_set="eval").splitlines()
    assert "| eval WER % | WER vs first | eval CER % |" in table[0]
    assert table[3].split("|")[7].strip() == "29.5 (28.0 / 31.6 / 29.0)"
    assert table[3].split("|")[8].strip() == "+14%"  # 29.53 against dense's mean 26.0: +13.6%
    # 31.6 against the mean 29.53: 2.07 points; a one-run entry has no spread to show
    assert table[-1] == "The largest distance of one run's eval WER from its entry's mean: 2.1 points (`lowrank.yaml`)."
    assert "distance" not in markdown(rows[2:])
    plot_wer(rows, tmp_path / "wer.png", "eval")
    assert (tmp_path / "wer.png").read_bytes()[:4] == b"\x89PNG"
    # a study of width tells its points apart by width as well as by parameters
    assert _wer_label(rows[1]) == "lowrank.yaml (100 wide, 3 runs)"
    assert _wer_label(rows[2]) == "one_seed.yaml (150 wide, 1 run)"


def test_compare_entries_carry_their_options_and_seeds(tmp_path):
    from espnet_lowrank.studies.entries import Entry, planned_runs

    entry = Entry.parse("conf/x.yaml --lowrank_warmup_epochs 2 --seeds 2022,2023")
    assert entry.options == ["--lowrank_warmup_epochs", "2"] and entry.seeds == [2022, 2023]
    assert entry.tag == "x_warmup2" and entry.name == "x.yaml --lowrank_warmup_epochs 2"
    assert Entry.parse("conf/x.yaml --lowrank_warmup_epochs 2 --lowrank_param_ratio 0.5").tag == "x_warmup2_budget0.5"
    equal = Entry.parse("conf/x.yaml --lowrank_warmup_epochs 2 --lowrank_param_ratio 0.5 "
                        "--lowrank_allocator equal_energy")
    assert equal.tag == "x_warmup2_budget0.5_equal_energy"
    tuned = Entry.parse("conf/x.yaml --lowrank_warmup_epochs 2 --lowrank_asr_args '--optim_conf lr=0.001'")
    assert tuned.options[-1] == "--optim_conf lr=0.001"
    assert tuned.name == "x.yaml --lowrank_warmup_epochs 2 --lowrank_asr_args '--optim_conf lr=0.001'"
    with pytest.raises(ValueError, match="must come last"):
        Entry.parse("conf/x.yaml --seeds 1,2 --lowrank_warmup_epochs 2")
    config = tmp_path / "x.yaml"
    config.write_text("seed: 2022\n")
    runs = planned_runs([Entry(config, ["--lowrank_warmup_epochs", "2"], [2022, 7])], [])
    # the config's own seed keeps the plain tag; another one is run.sh's training seed
    assert [(run.tag, run.options) for run in runs] == [
        ("x_warmup2", ["--lowrank_warmup_epochs", "2"]),
        ("x_warmup2_seed7", ["--lowrank_warmup_epochs", "2", "--seed", "7"])]


def _fake_recipe(tmp_path, fail_tag=None):
    """A recipe whose run.sh logs its options (and fails for one tag), and two configs that hold only their
    seed."""
    from espnet_lowrank.studies.recipe import Recipe

    (tmp_path / "run.sh").write_text(
        "#!/usr/bin/env bash\necho \"run.sh $* (OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset})\"\n"
        + (f"[[ \" $* \" == *' --asr_tag {fail_tag} '* ]] && exit 3\n" if fail_tag else "") + "exit 0\n")
    (tmp_path / "run.sh").chmod(0o755)
    configs = []
    for name in ("first", "second"):
        configs.append(tmp_path / f"{name}.yaml")
        configs[-1].write_text("seed: 2022\n")
    return Recipe(tmp_path), configs


def test_compare_jobs_trains_runs_side_by_side_and_does_not_compare_their_times(tmp_path, monkeypatch):
    from espnet_lowrank.studies import compare as tool
    from espnet_lowrank.studies.compare_table import Run
    from espnet_lowrank.studies.entries import Entry
    from espnet_lowrank.studies.recipe import Recipe

    recipe, configs = _fake_recipe(tmp_path)
    all_started = threading.Barrier(3, timeout=20)
    real_run, calls = Recipe.run, []

    def run_sh(self, *options, log=None, side_by_side=1):
        calls.append(options)
        real_run(self, *options, log=log, side_by_side=side_by_side)
        if "--asr_tag" in options:
            all_started.wait()  # times out unless the three runs are in flight at once

    monkeypatch.setattr(Recipe, "run", run_sh)
    monkeypatch.setattr(tool, "summarise", lambda recipe, run, test_set: Run(
        tag=run.tag, seed=run.seed, params=2_000_000 if "first" in run.tag else 1_000_000, width=144,
        epochs=[1, 2], valid_acc=[0.5, 0.6], valid_loss=[2.0, 1.0], train_seconds=120.0, wer=20.0, cer=5.0))
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    out = tmp_path / "results" / "study"
    table = tool.compare(recipe, [Entry(configs[0]), Entry(configs[1], seeds=[2022, 7])], out,
                         "eval", ["--ngpu", "1"], jobs=3).splitlines()
    # data stages (the scored set dumped too), then the shared statistics (stage 10) once, before any run
    assert calls[0][:4] == ("--stop_stage", "5", "--test_sets", "eval")
    assert calls[1][:4] == ("--stage", "10", "--stop_stage", "10")
    assert sorted(c[c.index("--asr_tag") + 1] for c in calls[2:]) == ["first", "second", "second_seed7"]
    # each of the 3 runs takes a third of the 6 threads allowed; its own seed is run.sh's --seed
    assert "--asr_tag second_seed7 --test_sets eval --ngpu 1 --seed 7 (OMP_NUM_THREADS=2)" in (
        out.parent / "study_logs" / "second_seed7.log").read_text()
    assert table[2].split("|")[6].strip() == "–" and table[3].split("|")[3].strip() == "2.00×"
    assert "3 runs at a time" in table[-1] and "not compared" in table[-1]


def test_compare_jobs_names_every_failed_run_after_the_others_finish(tmp_path):
    from espnet_lowrank.errors import InputError
    from espnet_lowrank.studies.compare import compare
    from espnet_lowrank.studies.entries import Entry

    recipe, configs = _fake_recipe(tmp_path, fail_tag="first")
    out = tmp_path / "results" / "study"
    with pytest.raises(InputError, match=r"failed: see .*study_logs/first\.log"):
        compare(recipe, [Entry(configs[0]), Entry(configs[1])], out, "test", [], jobs=2)
    assert "--asr_tag second" in (out.parent / "study_logs" / "second.log").read_text()


def test_a_study_needs_a_recipe_dir_with_its_run_sh(tmp_path):
    from espnet_lowrank.cli import main

    with pytest.raises(SystemExit, match=rf"--recipe_dir {tmp_path} holds no run.sh: give a recipe dir such as "
                                         "egs2/embedded/asr1"):
        main(["compare", "--recipe_dir", str(tmp_path), "--configs", "x.yaml", "--out", str(tmp_path / "o")])


def test_epoch_time_is_read_in_every_form_espnet_stores_it():
    import datetime

    from espnet_lowrank.studies.history import seconds

    assert seconds(datetime.timedelta(minutes=1, seconds=12)) == 72.0  # espnet 202511
    assert seconds({"__timedelta_seconds__": 72.0}) == 72.0  # espnet 202611
    assert seconds(72) == 72.0


@pytest.mark.slow
def test_budget_study_converts_fine_tunes_from_the_converted_weights_merges_and_tabulates(pipeline, tmp_path,
                                                                                          monkeypatch):
    """Dense twin -> budget_study: convert --param_ratio, decode, run.sh --init_param, decode, merge, decode."""
    import torch

    from espnet_lowrank.studies import budget_study

    recipe = pipeline["recipe"]
    data = ["--embedded_size", "tiny", "--token_type", "bpe", "--nbpe", "40", *SPEED_PERTURB,
            "--inference_nj", "1"]
    run(recipe, *data, "--stage", "11", "--stop_stage", "11",
        "--asr_config", str(ROOT / "tests" / "conf" / "tiny_dense.yaml"), "--asr_tag", "dense_twin",
        "--asr_args", "--max_epoch 1 --batch_size 8 --batch_type unsorted")
    monkeypatch.chdir(recipe)  # the tool moves there; this puts the test's cwd back afterwards
    out = tmp_path / "results" / "budget"
    arguments = ["--recipe_dir", str(recipe), "--dense_tag", "dense_twin", "--ratios", "0.6", "--fine_tune_epochs",
                 "1", "--multiple_of", "2", "--inference_nj", "1", "--out", str(out),
                 "--", *data, "--asr_args", "--max_epoch 5 --batch_size 8 --batch_type unsorted"]
    budget_study.main(arguments)  # python -m espnet_lowrank.studies.budget_study
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [row["name"] for row in rows] == ["dense", "convert 0.60", "convert 0.60 + 1 epochs",
                                             "convert 0.60 + 1 epochs, merged"]
    dense, converted, tuned, merged = rows
    assert abs(converted["params"] / dense["params"] - 0.6) <= 0.01 and tuned["params"] == converted["params"]
    assert merged["params"] == dense["params"] and merged["differing"] == 0
    assert (merged["wer"], merged["cer"]) == (tuned["wer"], tuned["cer"])
    assert tuned["fine_tune_seconds"] > 0 and all(row["decode_seconds"] > 0 for row in rows)
    table = out.with_suffix(".md").read_text()
    assert table.startswith("```bash\nespnet-lowrank budget-study --recipe_dir")
    assert len([line for line in table.splitlines() if line.startswith("| convert")]) == 3
    assert "merged from on 0 of" in table
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # the fine-tuning ran 1 epoch (the tool's --max_epoch wins), from the converted weights
    converted_dir = recipe / "exp" / "budget_dense_twin" / "r0.60"
    tuned_dir = recipe / "exp" / "asr_dense_twin_budget0.60_ft1"
    assert (tuned_dir / "1epoch.pth").exists() and not (tuned_dir / "2epoch.pth").exists()
    start, after = torch.load(converted_dir / "model.pth"), torch.load(tuned_dir / "1epoch.pth")
    name = next(key for key in start if key.startswith("encoder.") and key.endswith(".U"))[:-2]
    moved = (after[f"{name}.U"] @ after[f"{name}.V"] - start[f"{name}.U"] @ start[f"{name}.V"]).norm()
    assert 0 < moved < 0.5 * (start[f"{name}.U"] @ start[f"{name}.V"]).norm()  # one epoch on, not a fresh start
    # finished steps are reused: a second call decodes nothing again
    budget_study.main(arguments)
    assert json.loads(out.with_suffix(".json").read_text()) == rows


def test_budget_study_names_a_missing_dense_run(tmp_path, monkeypatch):
    from espnet_lowrank.cli import main

    monkeypatch.chdir(tmp_path)  # the tool moves into the recipe dir; this moves the test back afterwards
    recipe = recipe_dir(tmp_path / "recipe")
    with pytest.raises(SystemExit, match=r"exp/asr_nope/config.yaml does not exist: train the dense model first"):
        main(["budget-study", "--recipe_dir", str(recipe), "--dense_tag", "nope", "--out", str(tmp_path / "b")])


def test_budget_study_refuses_a_conversion_made_with_other_options(tmp_path):
    """Its decodes and fine-tuning were made from that conversion: reusing it quietly would mislabel them."""
    from espnet_lowrank.errors import InputError
    from espnet_lowrank.stages.marker import describe, record
    from espnet_lowrank.studies.budget_study import convert_once

    dense_config, dense_model = tmp_path / "config.yaml", tmp_path / "valid.acc.ave.pth"
    dense_config.write_text("encoder: conformer\n")
    dense_model.write_bytes(b"weights")
    converted = tmp_path / "budget" / "r0.70"
    record(converted / ".done", describe(["param_ratio=0.7", "multiple_of=8"], [str(dense_config), str(dense_model)]),
           finished=True)
    convert_once(converted, dense_config, dense_model, 0.7, 8)  # the same conversion: reused, nothing converted
    assert sorted(path.name for path in converted.iterdir()) == [".done"]
    with pytest.raises(InputError, match=r"r0.70 was made from other inputs: --multiple_of was '8', now '2'\. "
                                         r"Delete it, and the fine-tuning runs made from it"):
        convert_once(converted, dense_config, dense_model, 0.7, 2)
    dense_model.write_bytes(b"other weights")
    with pytest.raises(InputError, match=r"valid.acc.ave.pth changed"):
        convert_once(converted, dense_config, dense_model, 0.7, 8)


