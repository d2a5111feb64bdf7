"""Stage 11's plan (espnet_lowrank.stages.train), without training: the phases of a dense warm-up, when
there is none, the asr_train options each phase gets, and the commands --print_launch_cmd prints."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from espnet_lowrank.stages import StageError
from espnet_lowrank.stages.asr_inputs import AsrInputs
from espnet_lowrank.stages.launch import Launch
from espnet_lowrank.stages.train import Factorisation, TrainingRequest, Training, plan
from tiny_recipe import ROOT, TINY_CONFIG, recipe_dir, run

TINY_DENSE = ROOT / "tests" / "conf" / "tiny_dense.yaml"


def stage(config=TINY_CONFIG, **options) -> TrainingRequest:
    inputs = AsrInputs("char", Path("data/token_list/train/char/tokens.txt"), Path("dump/raw/train"),
                       Path("dump/raw/dev"))
    return TrainingRequest(Path(config), Path("exp/asr_x"), inputs, Path("exp/asr_stats_train_char"), **options)


def asr_train_args(words):
    """``words`` as our asr_train parses them (ESPnet's parser with our training options, for every config)."""
    from espnet_lowrank.model_config import training_parser

    return training_parser().parse_args(words)


def test_a_warmup_splits_max_epoch_into_dense_and_low_rank_phases(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the dense twin's config is written under exp/
    steps = plan(stage(asr_args="--max_epoch 5 --batch_size 2", warmup_epochs=2))
    dense, factorised, lowrank = steps
    assert isinstance(dense, Training) and isinstance(factorised, Factorisation) and isinstance(lowrank, Training)
    assert dense.out == Path("exp/asr_x/dense_warmup") and dense.phase_options == ["--max_epoch", "2"]
    assert dense.finished_marker == Path("exp/asr_x/dense_warmup/.done")
    assert factorised.out == Path("exp/asr_x/dense_warmup/lowrank_init.pth")
    assert lowrank.out == Path("exp/asr_x")
    assert lowrank.phase_options == ["--init_param", "exp/asr_x/dense_warmup/lowrank_init.pth", "--max_epoch", "3"]
    # the phase's own options come last, so they win over --asr_args
    dense.prepare()
    assert asr_train_args(lowrank.options()).max_epoch == 3 and asr_train_args(dense.options()).max_epoch == 2


def test_a_warmup_needs_fewer_epochs_than_max_epoch():
    with pytest.raises(StageError, match="--lowrank_warmup_epochs 5 must be at least 1 and less than max_epoch"):
        plan(stage(asr_args="--max_epoch=5", warmup_epochs=5))


def test_without_a_warmup_one_run_trains_from_the_init_param_if_given():
    (plain,) = plan(stage())
    assert plain.out == Path("exp/asr_x") and plain.phase_options == []
    (fine_tune,) = plan(stage(init_param="exp/half/model.pth"))
    assert fine_tune.phase_options == ["--init_param", "exp/half/model.pth"]


@pytest.mark.parametrize("options, said", [
    (dict(config=TINY_DENSE, warmup_epochs=2), "is dense: --lowrank_warmup_epochs 2 has nothing to factorise"),
    (dict(init_param="exp/half/model.pth", warmup_epochs=14),
     "--init_param gives the starting weights: no dense warm-up (--lowrank_warmup_epochs 14 not used)"),
])
def test_a_warmup_default_leaves_dense_configs_and_fine_tunings_alone(options, said, capsys):
    """The LibriSpeech recipes default to a warm-up: their dense baseline and a fine-tuning must still train."""
    (only,) = plan(stage(asr_args="--max_epoch 5", **options))
    assert only.out == Path("exp/asr_x") and "--max_epoch" not in only.phase_options
    assert said in capsys.readouterr().err


@pytest.mark.parametrize("recipe", ["librispeech_100", "librispeech"])
def test_the_librispeech_recipes_warm_up_within_their_configs_epochs(recipe):
    """Their run.sh defaults to a dense warm-up that must leave low-rank epochs."""
    wrapper = (ROOT / "egs2" / recipe / "asr1" / "run.sh").read_text()
    config = ROOT / re.search(r"^\s+--asr_config (\S+)", wrapper, re.M).group(1)
    warmup = int(re.search(r"^\s+--lowrank_warmup_epochs (\d+)", wrapper, re.M).group(1))
    total = yaml.safe_load(config.read_text())["max_epoch"]
    lowrank = stage(config, warmup_epochs=warmup).lowrank_epochs()
    assert lowrank == total - warmup >= 0.75 * total


def test_the_seed_and_every_asr_args_reach_asr_train_and_the_marker():
    run_ = stage(asr_args="--max_epoch 3 --batch_size 4", seed=7)
    (plain,) = plan(run_)
    parsed = asr_train_args(plain.options())
    assert (parsed.seed, parsed.max_epoch, parsed.batch_size) == (7, 3, 4)
    assert run_.marker_state()["options"]["seed"] == "7"
    assert "seed" not in stage().marker_state()["options"]  # unset: the markers of older runs still match


def test_a_guided_config_tells_ddp_about_unused_parameters_only_with_several_processes():
    guided = ROOT / "tests" / "conf" / "tiny_lowrank_guided.yaml"
    (one,) = plan(stage(guided))
    (several,) = plan(stage(guided, launch=Launch(num_procs=2)))
    assert "--unused_parameters" not in one.options()
    assert asr_train_args(several.options()).unused_parameters is True


def printed(recipe, *options):
    """The commands run.sh --print_launch_cmd prints, each split into its steps' words."""
    result = run(recipe, "--print_launch_cmd", "true", *options)
    lines = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    assert len(lines) == 2 and lines[1].startswith("srun ")
    return [shlex.split(step) for step in lines[0].split(" && ")]


def test_run_sh_adds_up_every_asr_args_and_passes_the_seed(tmp_path):
    steps = printed(recipe_dir(tmp_path), "--asr_config", str(TINY_CONFIG), "--asr_args", "--max_epoch 3",
                    "--asr_args=--batch_size 4", "--seed", "11")
    assert steps[0] == ["cd", str(tmp_path)]
    (train,) = steps[1:]
    assert train[1:3] == ["-m", "espnet_lowrank.bin.asr_train"]
    parsed = asr_train_args(train[3:])
    assert (parsed.max_epoch, parsed.batch_size, parsed.seed) == (3, 4, 11)


def test_cpu_bf16_is_its_own_option_and_the_marker_records_it_only_when_on():
    """Inside --asr_args it changed the marker of every run begun before it, which then refused to resume,
    and overrode a config's own cpu_bf16."""
    unset = stage(asr_args="--max_epoch 3", seed=7)
    assert unset.marker_state()["options"] == {"asr_args": "--max_epoch 3", "lowrank_warmup_epochs": "0", "seed": "7"}
    assert "--cpu_bf16" not in plan(unset)[0].options()  # the config's, or asr_train's default (false)
    auto = stage(asr_args="--max_epoch 3", seed=7, cpu_bf16="auto")
    assert auto.marker_state()["options"]["cpu_bf16"] == "auto"
    assert asr_train_args(plan(auto)[0].options()).cpu_bf16 == "auto"


def test_run_sh_passes_its_cpu_bf16_on_and_asr_args_win(tmp_path):
    recipe = recipe_dir(tmp_path)
    for options, expected in [((), "false"), (("--cpu_bf16", "auto"), "auto"),  # unset: asr_train's default
                              (("--cpu_bf16", "auto", "--asr_args", "--cpu_bf16 true"), "true")]:  # asr_args win
        (train,) = printed(recipe, "--asr_config", str(TINY_CONFIG), *options)[1:]
        assert asr_train_args(train[3:]).cpu_bf16 == expected, options
    says_auto = tmp_path / "says_auto.yaml"
    says_auto.write_text(TINY_CONFIG.read_text() + "cpu_bf16: auto\n")
    for options, expected in [((), "auto"), (("--cpu_bf16", "false"), "false")]:  # the config's, unless told
        (train,) = printed(recipe, "--asr_config", str(says_auto), *options)[1:]
        assert asr_train_args(train[3:]).cpu_bf16 == expected, options
    refused = run(recipe, "--asr_config", str(TINY_CONFIG), "--cpu_bf16", "yes", "--print_launch_cmd", "true",
                  check=False)
    assert refused.returncode != 0 and "--cpu_bf16 'yes' is unknown; choose one of: false auto true" in refused.stderr


def test_the_printed_warmup_is_its_three_steps_and_the_dense_config_is_written(tmp_path, monkeypatch):
    recipe = recipe_dir(tmp_path)
    monkeypatch.chdir(recipe)  # the printed paths are the recipe dir's
    steps = printed(recipe, "--asr_config", str(TINY_CONFIG), "--lowrank_warmup_epochs", "1",
                    "--asr_args", "--max_epoch 3")
    dense, convert, lowrank = steps[1:]
    assert asr_train_args(dense[3:]).output_dir == "exp/asr_tiny_lowrank/dense_warmup"
    assert convert[1:4] == ["-m", "espnet_lowrank.cli", "convert"]
    assert convert[convert.index("--dense_model") + 1] == "exp/asr_tiny_lowrank/dense_warmup/1epoch.pth"
    assert asr_train_args(lowrank[3:]).init_param == ["exp/asr_tiny_lowrank/dense_warmup/lowrank_init.pth"]
    written = yaml.safe_load((recipe / "exp/asr_tiny_lowrank/dense_warmup/dense_config.yaml").read_text())
    assert written["encoder"] == "conformer" and not any(k.startswith("lowrank_") for k in written["encoder_conf"])


def test_lowrank_asr_args_reach_the_low_rank_phase_only_and_its_marker(tmp_path, monkeypatch):
    """E.g. the low-rank phase's own peak learning rate; the plan's --init_param and --max_epoch still hold."""
    recipe = recipe_dir(tmp_path)
    monkeypatch.chdir(recipe)
    steps = printed(recipe, "--asr_config", str(TINY_CONFIG), "--lowrank_warmup_epochs", "1",
                    "--asr_args", "--max_epoch 3", "--lowrank_asr_args", "--optim_conf lr=0.0012 --max_epoch 9",
                    "--lowrank_asr_args=--batch_size 4")
    dense, lowrank = asr_train_args(steps[1][3:]), asr_train_args(steps[3][3:])
    assert lowrank.optim_conf["lr"] == 0.0012 and lowrank.batch_size == 4
    assert lowrank.max_epoch == 2 and lowrank.init_param == ["exp/asr_tiny_lowrank/dense_warmup/lowrank_init.pth"]
    assert dense.optim_conf.get("lr") != 0.0012 and dense.batch_size != 4 and dense.max_epoch == 1
    tuned = stage(asr_args="--max_epoch 5", warmup_epochs=2, lowrank_asr_args="--optim_conf lr=0.0012")
    assert tuned.marker_state()["options"]["lowrank_asr_args"] == "--optim_conf lr=0.0012"
    assert "lowrank_asr_args" not in stage(asr_args="--max_epoch 5", warmup_epochs=2).marker_state()["options"]


def test_lowrank_asr_args_without_a_warmup_are_refused():
    with pytest.raises(StageError, match="--lowrank_asr_args '--optim_conf lr=0.001' is for the low-rank phase "
                                         "after a dense warm-up: give --lowrank_warmup_epochs too"):
        plan(stage(lowrank_asr_args="--optim_conf lr=0.001"))


@pytest.mark.parametrize("options", [("--init_param", "{model}"), ("--lowrank_warmup_epochs", "0")])
def test_the_librispeech_100_recipe_fine_tunes_or_trains_without_a_warmup(tmp_path, options):
    """The recipe defaults to a warm-up; --init_param (fine-tuning) and --lowrank_warmup_epochs 0 train one run."""
    model = tmp_path / "model.pth"
    model.write_bytes(b"weights")
    options = [word.format(model=model) for word in options]
    recipe = ROOT / "egs2" / "librispeech_100" / "asr1"
    result = run(recipe, "--print_launch_cmd", "true", "--expdir", str(tmp_path / "exp"), *options)
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("cd ")]
    (train,) = [shlex.split(step) for step in line.split(" && ")[1:]]
    parsed = asr_train_args(train[3:])
    assert parsed.config == "conf/tuning/train_asr_lrsms.yaml" and parsed.ngpu == 1
    assert parsed.init_param == ([str(model)] if "--init_param" in options else [])


def test_a_budgeted_warmup_trains_the_budget_config_and_records_the_ratio(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    budgeted = stage(asr_args="--max_epoch 5", warmup_epochs=2, param_ratio=0.5)
    dense, factorised, lowrank = plan(budgeted)
    assert factorised.config == Path("exp/asr_x/dense_warmup/lowrank_config.yaml") == lowrank.config
    assert dense.config == Path("exp/asr_x/dense_warmup/dense_config.yaml")
    (convert,) = factorised.commands()
    assert convert[convert.index("--param_ratio") + 1] == "0.5"
    assert convert[convert.index("--config") + 1] == str(TINY_CONFIG)  # its groups and settings
    assert convert[convert.index("--out_config") + 1] == "exp/asr_x/dense_warmup/lowrank_config.yaml"
    assert budgeted.marker_state()["options"]["lowrank_param_ratio"] == "0.5"
    assert "lowrank_param_ratio" not in stage(asr_args="--max_epoch 5", warmup_epochs=2).marker_state()["options"]
    fixed = plan(stage(asr_args="--max_epoch 5", warmup_epochs=2))[2]
    assert fixed.config == TINY_CONFIG
    assert convert[convert.index("--allocator") + 1] == "energy"
    assert "lowrank_allocator" not in budgeted.marker_state()["options"]  # markers from before it still match
    equal = stage(asr_args="--max_epoch 5", warmup_epochs=2, param_ratio=0.5, allocator="equal_energy")
    assert equal.marker_state()["options"]["lowrank_allocator"] == "equal_energy"
    (convert,) = plan(equal)[1].commands()
    assert convert[convert.index("--allocator") + 1] == "equal_energy"
    assert "--shape_files" not in convert
    fast = stage(asr_args="--max_epoch 5", warmup_epochs=2, param_ratio=0.5, allocator="no_slower",
                 launch=Launch(ngpu=1))
    (convert,) = plan(fast)[1].commands()  # timed on the recipe's own batch, on the training device
    at = convert.index("--shape_files")
    assert convert[at + 1:at + 3] == ["exp/asr_stats_train_char/train/speech_shape",
                                      "exp/asr_stats_train_char/train/text_shape.char"]
    assert convert[convert.index("--time_device") + 1] == "cuda"


def test_no_slower_times_the_layers_at_the_recipes_own_batch(tmp_path, monkeypatch):
    """The factorisation step, in process: the warmed-up model's layers are timed at the batch the
    run's sampler (here batch_size 2) makes from the recipe's shape files; a fake clock stands in for
    the machine's."""
    import torch

    from espnet_lowrank import layer_speed
    from espnet_lowrank.model_config import build_model

    monkeypatch.chdir(tmp_path)
    tokens = ["<blank>", "<unk>", *"abcdefghijklmnop", "<sos/eos>"]
    warmup = Path("exp/asr_x/dense_warmup")
    warmup.mkdir(parents=True)
    dense = yaml.safe_load((TINY_CONFIG.parent / "tiny_dense.yaml").read_text())
    dense.update(token_list=tokens, batch_type="unsorted", batch_size=2)
    (warmup / "config.yaml").write_text(yaml.safe_dump(dense))
    torch.save(build_model(warmup / "config.yaml").state_dict(), warmup / "2epoch.pth")
    stats = Path("exp/asr_stats_train_char/train")
    stats.mkdir(parents=True)
    (stats / "speech_shape").write_text("".join(f"u{i} {8000 * (i + 1)}\n" for i in range(6)))
    (stats / "text_shape.char").write_text("".join(f"u{i} {3 + i},{len(tokens)}\n" for i in range(6)))
    seen = []

    def seconds(layer, shape, probe):
        seen.append(tuple(shape))
        return 1.0 if hasattr(layer, "rank") else 2.0  # every rank faster: no_slower is energy here

    monkeypatch.setattr(layer_speed, "step_seconds", seconds)
    fast = stage(asr_args="--max_epoch 5", warmup_epochs=2, param_ratio=0.6, allocator="no_slower")
    plan(fast)[1].run()
    assert {shape[0] for shape in seen} == {2}  # batch_size 2, not the uniform 12 s default
    assert Path("exp/asr_x/dense_warmup/lowrank_config.yaml").exists()
    assert "trains slower than dense at ranks" in (warmup / "convert.log").read_text()


@pytest.mark.parametrize("options, message", [
    (dict(param_ratio=0.5), "--lowrank_param_ratio 0.5 chooses ranks from a dense warm-up's trained weights: "
                            "give --lowrank_warmup_epochs too"),
    (dict(param_ratio=1.5, warmup_epochs=2), r"--lowrank_param_ratio 1.5: .* in \(0, 1\)"),
    (dict(param_ratio=0.5, warmup_epochs=2, allocator="uniform"),
     "--lowrank_allocator 'uniform' is unknown; choose one of: energy equal_energy no_slower"),
])
def test_a_bad_param_ratio_is_named(options, message):
    with pytest.raises(StageError, match=message):
        plan(stage(asr_args="--max_epoch 5", **options))


def test_run_sh_names_a_param_ratio_that_is_not_a_number(tmp_path):
    result = run(recipe_dir(tmp_path), "--asr_config", str(TINY_CONFIG), "--lowrank_warmup_epochs", "1",
                 "--lowrank_param_ratio", "half", "--print_launch_cmd", "true", check=False)
    assert result.returncode != 0 and "--lowrank_param_ratio 'half': " in result.stderr
    assert "Traceback" not in result.stderr


def test_run_sh_takes_every_allocator_stage_11_implements(tmp_path):
    """run.sh leaves --lowrank_allocator to stage 11, whose choices are the budget's own."""
    from espnet_lowrank.budget import ALLOCATORS

    recipe = recipe_dir(tmp_path)
    result = run(recipe, "--asr_config", str(TINY_CONFIG), "--asr_args", "--max_epoch 5", "--lowrank_warmup_epochs",
                 "2", "--lowrank_param_ratio", "0.5", "--lowrank_allocator", "no_slower", "--print_launch_cmd", "true")
    assert "--param_ratio 0.5 --allocator no_slower " in result.stdout and "--time_device cpu" in result.stdout
    refused = run(recipe, "--asr_config", str(TINY_CONFIG), "--asr_args", "--max_epoch 5", "--lowrank_warmup_epochs",
                  "2", "--lowrank_param_ratio", "0.5", "--lowrank_allocator", "fastest", "--print_launch_cmd", "true",
                  check=False)
    assert refused.returncode != 0
    assert f"--lowrank_allocator 'fastest' is unknown; choose one of: {' '.join(ALLOCATORS)}" in refused.stderr
