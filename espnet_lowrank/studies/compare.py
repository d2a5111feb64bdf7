"""Train, decode and score several configs on the same data with the same budget, side by side:
``espnet-lowrank compare``.

    espnet-lowrank compare --recipe_dir egs2/embedded/asr1 --out results/demo \\
        --configs conf/compare/train_asr_conformer_demo.yaml \\
                  "conf/train_asr_lrsms_demo.yaml --lowrank_warmup_epochs 2" \\
        --seeds 2022 2023

runs the recipe's ``run.sh`` stages 1-5 once, then stages 10-13 for each config (each in
``exp/asr_<tag>``; a config may carry run.sh options of its own after its path, which then name its
tag too), once per ``--seeds`` value (run.sh's ``--seed``, the training seed; the config's own seed
keeps the plain tag), or per entry with ``--seeds A,B`` at its end, and writes ``<out>.md``
(parameters, total training time against the first config, ``--test_set``'s WER/CER: the mean over
seeds, then each run's, WER relative to the first config's, and how far one run strays from its
mean), ``<out>.json`` (every number), ``<out>.png`` (validation accuracy and loss per epoch, every
run; a dense warm-up's epochs come first) and ``<out>_wer.png`` (WER against parameters). Finished
runs are reused, so rows can be added later. Extra ``run.sh`` options for every run go after ``--``.

``--jobs N`` trains N runs at a time (on a machine with more cores than one run can use), each with
1/N of the threads (``OMP_NUM_THREADS``) and its output in ``<out>_logs/<tag>.log``; their training
times then share the machine, and the table does not compare them.
"""

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import List, Sequence

from espnet_lowrank.tools.command import command_main
from espnet_lowrank.errors import InputError
from espnet_lowrank.studies.compare_table import Run, markdown, plot, plot_wer
from espnet_lowrank.studies.entries import Entry, PlannedRun, planned_runs
from espnet_lowrank.studies.history import training_history
from espnet_lowrank.studies.pool import run_all
from espnet_lowrank.studies.recipe import Recipe


def summarise(recipe: Recipe, run: PlannedRun, test_set: str) -> Run:
    from espnet_lowrank.guide import finish_guides
    from espnet_lowrank.model_config import build_model, count_parameters
    from espnet_lowrank.stages.score import score_set, scored_decode_dir

    exp = recipe.exp(run.tag)
    history = training_history(exp)
    # the decoding this compare's stages 12-13 made, not the newest: an exp dir decoded
    # again by hand with another inference config holds both
    decode_dir = scored_decode_dir(exp / "RESULTS.md", test_set)
    scores = score_set(recipe.path / "dump" / "raw" / test_set / "text", decode_dir / test_set / "text")
    # the model that is decoded: the run's saved config (a budgeted warm-up's ranks are only there), its
    # guides, if any, gone; its feature statistics hold no parameters and are named relative to the recipe
    decoded = finish_guides(build_model(exp / "config.yaml", overrides={"normalize": None}))
    return Run(
        tag=run.tag, seed=run.seed, params=count_parameters(decoded), width=decoded.encoder.output_size(),
        epochs=history["epochs"], valid_acc=history["valid_acc"], valid_loss=history["valid_loss"],
        train_seconds=sum(history["seconds"]), wer=scores["WER"].error_rate, cer=scores["CER"].error_rate,
    )


def compare(recipe: Recipe, entries: Sequence[Entry], out: Path, test_set: str,
            run_args: Sequence[str] = (), seeds: Sequence[int] = (), jobs: int = 1) -> str:
    entries = [_resolved(entry) for entry in entries]
    recipe.run("--stop_stage", "5", "--test_sets", test_set, *run_args)  # the set it scores is dumped too
    if jobs > 1:  # the feature statistics all runs share, made once before they start side by side
        recipe.run("--stage", "10", "--stop_stage", "10", "--asr_config", str(entries[0].config), *run_args)
    plan = planned_runs(entries, seeds)

    def make(run: PlannedRun) -> None:
        log = out.parent / f"{out.name}_logs" / f"{run.tag}.log" if jobs > 1 else None
        recipe.run("--stage", "10", "--stop_stage", "13", "--asr_config", str(run.entry.config),
                   "--asr_tag", run.tag, "--test_sets", test_set, *run_args, *run.options, log=log,
                   side_by_side=jobs)

    run_all(make, plan, jobs)
    rows = [{"name": entry.name, "runs": [summarise(recipe, run, test_set) for run in plan if run.entry is entry]}
            for entry in entries]
    table = markdown(rows, test_set, jobs)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table + "\n")
    out.with_suffix(".json").write_text(json.dumps(
        [{"name": r["name"], "runs": [asdict(run) for run in r["runs"]]} for r in rows], indent=1))
    plot(rows, out.with_suffix(".png"))
    plot_wer(rows, out.parent / f"{out.name}_wer.png", test_set)
    return table


def _resolved(entry: Entry) -> Entry:
    """The entry with an absolute config path, which run.sh finds from the recipe dir too."""
    if not entry.config.is_file():
        raise InputError(f"--configs: {entry.config} does not exist")
    return Entry(entry.config.resolve(), entry.options, entry.seeds)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe_dir", type=Path, required=True, help="e.g. egs2/embedded/asr1")
    parser.add_argument("--configs", nargs="+", required=True,
                        help='config paths, each optionally with run.sh options: "conf/x.yaml --opt value"')
    parser.add_argument("--seeds", type=int, nargs="*", default=[],
                        help="train every config once per seed (default: once, with the config's seed)")
    parser.add_argument("--out", type=Path, required=True, help="writes <out>.md, <out>.json and <out>.png")
    parser.add_argument("--test_set", default="test")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at a time (default 1: one after another, times comparable)")
    parser.set_defaults(run_args=[])  # run.sh options for every run, after --


def run(args: argparse.Namespace) -> None:
    if args.jobs < 1:
        raise InputError(f"--jobs {args.jobs}: give 1 or more")
    entries: List[Entry] = [Entry.parse(text) for text in args.configs]
    print(compare(Recipe(args.recipe_dir.resolve()), entries, args.out.resolve(), args.test_set, args.run_args,
                  args.seeds, args.jobs))


main = command_main(__doc__, add_arguments, run)

if __name__ == "__main__":
    main()
