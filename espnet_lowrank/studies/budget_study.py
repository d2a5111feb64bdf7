"""What compressing a trained dense model costs, measured: ``espnet-lowrank budget-study``.

    espnet-lowrank budget-study --recipe_dir egs2/embedded/asr1 \\
        --dense_tag train_asr_conformer_demo --ratios 0.7 0.5 0.35 --fine_tune_epochs 2 --out results/budget

Starting from a dense run that stage 11 finished (``exp/asr_<dense_tag>``),
for each ratio R: ``espnet-lowrank convert --param_ratio R`` on its averaged
weights, decoded as converted; ``run.sh --init_param`` trains the converted
model on for ``--fine_tune_epochs`` (fresh optimiser, in
``exp/asr_<dense_tag>_budget<R>_ft<E>``), decoded again; and ``espnet-lowrank
merge`` of the fine-tuned model, decoded once more, whose hypotheses must be
the fine-tuned model's. Every decode is stage 12's (the same jobs and
inference config, relative to the recipe dir) on ``--test_set``, timed; writes ``<out>.md`` (parameters,
test WER/CER, decode and fine-tuning time per model), ``<out>.json`` and
``<out>.png`` (WER against parameters). Finished steps are reused (their
files in ``exp/budget_<dense_tag>``; delete them to redo); a conversion made
with other options or from other weights is refused, not reused. Extra ``run.sh``
options for the fine-tuning go after ``--``.
"""

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Sequence

from espnet_lowrank.tools.command import command_main
from espnet_lowrank.errors import InputError
from espnet_lowrank.studies.history import training_history
from espnet_lowrank.studies.recipe import Recipe


@dataclass
class Row:
    name: str
    params: int
    wer: float
    cer: float
    decode_seconds: float
    fine_tune_seconds: float = 0.0
    hypotheses: str = ""  # the decoded text file
    differing: int = 0  # a merged model: utterances it decodes unlike the model it was merged from


def decode_and_score(name: str, config: Path, model: Path, work: Path, recipe: Path, test_set: str,
                     inference_config: Path, nj: int, fine_tune_seconds: float = 0.0) -> Row:
    """Stage 12 and 13 for one model, timed; reused when ``work/row.json`` exists."""
    from espnet_lowrank.model_config import build_model, count_parameters
    from espnet_lowrank.stages.decode import decode
    from espnet_lowrank.stages.score import score_set

    saved = work / "row.json"
    if saved.exists():
        return Row(**json.loads(saved.read_text()))
    data = recipe / "dump" / "raw" / test_set
    started = time.perf_counter()
    hypotheses = decode(data, work / f"decode_{test_set}", config, model, inference_config, nj)
    seconds = time.perf_counter() - started
    scores = score_set(data / "text", hypotheses)
    row = Row(name=name, params=count_parameters(build_model(config)), wer=scores["WER"].error_rate,
              cer=scores["CER"].error_rate, decode_seconds=seconds, fine_tune_seconds=fine_tune_seconds,
              hypotheses=str(hypotheses))
    saved.write_text(json.dumps(asdict(row), indent=1))
    return row


def differing_hypotheses(first: Row, second: Row) -> int:
    from espnet_lowrank.kaldi_table import read_table

    one, other = read_table(Path(first.hypotheses)), read_table(Path(second.hypotheses))
    return sum(one[key].strip() != other.get(key, "").strip() for key in one)


def convert_once(converted: Path, dense_config: Path, dense_model: Path, ratio: float, multiple_of: int) -> None:
    """``convert --param_ratio`` into ``converted``, unless it holds that very conversion: one made with other
    options or from other weights is refused, since decodes and a fine-tuning were made from it."""
    from espnet_lowrank.stages.marker import changes, describe, read_marker, record
    from espnet_lowrank.conversion import convert_by_budget

    marker = converted / ".done"
    state = describe([f"param_ratio={ratio}", f"multiple_of={multiple_of}"], [str(dense_config), str(dense_model)])
    old = read_marker(marker)
    if old is not None and old.get("finished"):
        found = changes(old, state)
        if found:
            raise InputError(f"{converted} was made from other inputs: {'; '.join(found)}. Delete it, and the "
                             f"fine-tuning runs made from it (exp/asr_*_budget{ratio:.2f}_ft*), to redo")
        return
    convert_by_budget(dense_config, dense_model, ratio, converted / "model.pth", multiple_of=multiple_of)
    record(marker, state, finished=True)


def study(recipe: Recipe, dense_tag: str, dense_model: str, ratios: Sequence[float], epochs: int,
          test_set: str, inference_config: Path, nj: int, multiple_of: int, run_args: Sequence[str]) -> List[Row]:
    """The study's rows, run from inside the recipe dir (the dense run's saved config names its files
    relative to it)."""
    from espnet_lowrank.merging import merge

    dense_exp = Path("exp") / f"asr_{dense_tag}"
    for needed in (dense_exp / "config.yaml", dense_exp / dense_model):
        if not needed.is_file():
            raise InputError(f"{recipe.path / needed} does not exist: train the dense model first "
                             f"(run.sh --asr_tag {dense_tag} --stop_stage 11, or compare)")
    work = Path("exp") / f"budget_{dense_tag}"
    common = (recipe.path, test_set, inference_config, nj)
    rows = [decode_and_score("dense", dense_exp / "config.yaml", dense_exp / dense_model, work / "dense", *common)]
    for ratio in ratios:
        converted = work / f"r{ratio:.2f}"
        convert_once(converted, dense_exp / "config.yaml", dense_exp / dense_model, ratio, multiple_of)
        rows.append(decode_and_score(f"convert {ratio:.2f}", converted / "config.yaml", converted / "model.pth",
                                     converted, *common))
        tag = f"{dense_tag}_budget{ratio:.2f}_ft{epochs}"
        recipe.run("--stage", "10", "--stop_stage", "11", "--asr_config", str((converted / "config.yaml").resolve()),
                   "--init_param", str((converted / "model.pth").resolve()), "--asr_tag", tag, *run_args,
                   "--asr_args", f"--max_epoch {epochs}")  # run.sh's --asr_args add up: this one comes last
        tuned = Path("exp") / f"asr_{tag}"
        seconds = sum(training_history(tuned)["seconds"])
        tuned_row = decode_and_score(f"convert {ratio:.2f} + {epochs} epochs", tuned / "config.yaml",
                                     tuned / "valid.acc.ave.pth", work / f"r{ratio:.2f}_ft{epochs}", *common,
                                     fine_tune_seconds=seconds)
        merged = work / f"r{ratio:.2f}_ft{epochs}_merged"
        if not (merged / "model.pth").exists():
            merge(tuned / "config.yaml", tuned / "valid.acc.ave.pth", merged)
        merged_row = decode_and_score(f"convert {ratio:.2f} + {epochs} epochs, merged", merged / "config.yaml",
                                      merged / "model.pth", merged, *common)
        merged_row.differing = differing_hypotheses(tuned_row, merged_row)
        if merged_row.differing:  # float rounding may flip a close beam; reported, not hidden
            print(f"WARNING: the merged model ({merged}) decodes {merged_row.differing} utterances of {test_set} "
                  f"differently from the model it was merged from ({tuned})", file=sys.stderr)
        rows += [tuned_row, merged_row]
    return rows


def markdown(rows: Sequence[Row], utterances: int, nj: int) -> str:
    dense = rows[0]
    lines = [
        f"| model | params (M) | of dense | test WER % | test CER % | decode time (s, {utterances} utts, "
        f"{nj} jobs) | fine-tuning time (min) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        tuning = f"{row.fine_tune_seconds / 60:.1f}" if row.fine_tune_seconds else "–"
        lines.append(f"| {row.name} | {row.params / 1e6:.2f} | {row.params / dense.params:.3f} | {row.wer:.1f} | "
                     f"{row.cer:.1f} | {row.decode_seconds:.0f} | {tuning} |")
    merged = [row for row in rows if row.name.endswith("merged")]
    if merged:
        lines.append(f"\nEach merged model's hypotheses differ from those of the model it was merged from on "
                     f"{', '.join(str(row.differing) for row in merged)} of {utterances} utterances.")
    return "\n".join(lines)


def plot(rows: Sequence[Row], path: Path, epochs: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    dense = rows[0]
    converted = [r for r in rows if r.name.startswith("convert") and "epochs" not in r.name]
    tuned = [r for r in rows if r.name.endswith(f"+ {epochs} epochs")]
    axis.plot([r.params / 1e6 for r in converted], [r.wer for r in converted], "o--", label="converted, no training")
    axis.plot([r.params / 1e6 for r in tuned], [r.wer for r in tuned], "s-", label=f"+ {epochs} epochs fine-tuning")
    axis.plot([dense.params / 1e6], [dense.wer], "k*", markersize=12, label="dense")
    axis.set(xlabel="parameters (M)", ylabel="test WER %", title="convert --param_ratio, then fine-tune")
    axis.set_yscale("log")  # a converted model may be far off before fine-tuning
    for ticks in (axis.yaxis.set_major_formatter, axis.yaxis.set_minor_formatter):
        ticks(FormatStrFormatter("%g"))
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe_dir", type=Path, required=True, help="e.g. egs2/embedded/asr1")
    parser.add_argument("--dense_tag", required=True, help="the dense run: exp/asr_<dense_tag>")
    parser.add_argument("--dense_model", default="valid.acc.ave.pth", help="its weights in that dir")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.7, 0.5, 0.35])
    parser.add_argument("--fine_tune_epochs", type=int, default=2)
    parser.add_argument("--multiple_of", type=int, default=8)
    parser.add_argument("--test_set", default="test")
    parser.add_argument("--inference_config", type=Path, default=Path("conf/decode_asr_cpu.yaml"),
                        help="relative to the recipe dir, or absolute")
    parser.add_argument("--inference_nj", type=int, default=2, help="decoding jobs, as run.sh's")
    parser.add_argument("--out", type=Path, required=True, help="writes <out>.md, <out>.json and <out>.png")
    parser.set_defaults(run_args=[])  # run.sh options for the fine-tuning, after --


def run(args: argparse.Namespace) -> None:
    command = shlex.join(["espnet-lowrank", "budget-study", *args.argv])
    out = args.out.resolve()
    recipe = Recipe(args.recipe_dir.resolve())
    inference_config = recipe.path / args.inference_config
    os.chdir(recipe.path)  # the dense run's saved config names its files relative to the recipe dir
    rows = study(recipe, args.dense_tag, args.dense_model, args.ratios, args.fine_tune_epochs, args.test_set,
                 inference_config, args.inference_nj, args.multiple_of, args.run_args)
    utterances = len((recipe.path / "dump" / "raw" / args.test_set / "text").read_text().splitlines())
    table = markdown(rows, utterances, args.inference_nj)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(f"```bash\n{command}\n```\n\n{table}\n")
    out.with_suffix(".json").write_text(json.dumps([asdict(row) for row in rows], indent=1))
    plot(rows, out.with_suffix(".png"), args.fine_tune_epochs)
    print(table)


main = command_main(__doc__, add_arguments, run)

if __name__ == "__main__":
    main()
