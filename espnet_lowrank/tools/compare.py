"""Train, decode and score several configs on the same data with the same
budget, and put them side by side: ``python -m espnet_lowrank.tools.compare``.

    python -m espnet_lowrank.tools.compare --recipe_dir egs2/embedded/asr1 --out results/demo \\
        --configs conf/compare/train_asr_conformer_demo.yaml \\
                  "conf/train_asr_lrsms_demo.yaml --lowrank_warmup_epochs 2" \\
        --seeds 2022 2023

runs ``run.sh`` stages 1-5 once, then stages 10-13 for each config (each in
``exp/asr_<tag>``; a config may carry run.sh options of its own after its
path, which then name its tag too), once per ``--seeds`` value (ESPnet's
``--seed``; the config's own seed keeps the plain tag), or per entry with
``--seeds A,B`` at its end, and writes
``<out>.md`` (parameters, total training time against the first config,
test WER/CER: the mean over seeds, then each run's), ``<out>.json`` (every
number) and ``<out>.png`` (validation accuracy and loss per epoch, every
run; a dense warm-up's epochs come first). Finished runs are reused, so rows
can be added later. Extra ``run.sh`` options for every run go after ``--``.

``--jobs N`` trains N runs at a time (on a machine with more cores than one
run can use), each with 1/N of the threads
(``OMP_NUM_THREADS``) and its output in ``<out>_logs/<tag>.log``; their training
times then share the machine, and the table does not compare them.
"""

import argparse
import datetime
import json
import re
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from espnet_lowrank.errors import one_line_errors
from espnet_lowrank.threads import job_environment

ROOT = Path(__file__).resolve().parents[2]
#: Where run.sh puts the dense phase of ``--lowrank_warmup_epochs`` inside an exp dir.
WARMUP_DIR = "dense_warmup"


@dataclass
class Entry:
    """One row of the table: a config, its own run.sh options and, if it has
    its own, the seeds it runs with (``--seeds 2022,2023`` at the end)."""

    config: Path
    options: List[str] = field(default_factory=list)
    seeds: List[int] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> "Entry":
        words = shlex.split(text)
        seeds = []
        if "--seeds" in words:
            index = words.index("--seeds")
            if index + 2 != len(words):
                raise ValueError(f"{text!r}: --seeds A,B,... must come last")
            seeds = [int(seed) for seed in words[index + 1].split(",")]
            words = words[:index]
        return cls(Path(words[0]), words[1:], seeds)

    @property
    def name(self) -> str:
        return " ".join([self.config.name, *self.options])

    @property
    def tag(self) -> str:
        suffix = "".join(f"_{re.sub(r'[^A-Za-z0-9._]+', '', word)}" for word in self.options)
        return self.config.stem + suffix.replace("_lowrank_warmup_epochs_", "_warmup")


@dataclass
class Run:
    tag: str
    seed: int
    params: int
    epochs: List[int]
    valid_acc: List[float]
    valid_loss: List[float]
    train_seconds: float
    wer: float
    cer: float


def epoch_stats(exp: Path) -> Dict[int, Dict[str, Dict[str, float]]]:
    """ESPnet's per-epoch statistics, from the reporter state in checkpoint.pth."""
    checkpoint = exp / "checkpoint.pth"
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint} does not exist: did stage 11 run for {exp.name}?")
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["reporter"]["stats"]


def seconds(value) -> float:
    """An epoch's time as ESPnet's reporter keeps it: a timedelta (espnet
    202511), a dict naming its seconds (202611), or a number."""
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return value["__timedelta_seconds__"] if isinstance(value, dict) else float(value)


def training_history(exp: Path) -> Dict[str, list]:
    """Epoch numbers, validation curves and seconds (training + validation)
    of every epoch of a run, a dense warm-up's first."""
    phases = [exp / WARMUP_DIR, exp] if (exp / WARMUP_DIR / "checkpoint.pth").exists() else [exp]
    history: Dict[str, list] = {"epochs": [], "valid_acc": [], "valid_loss": [], "seconds": []}
    for phase in phases:
        stats = epoch_stats(phase)
        offset = len(history["epochs"])
        for epoch in sorted(stats):
            history["epochs"].append(offset + epoch)
            history["valid_acc"].append(stats[epoch]["valid"]["acc"])
            history["valid_loss"].append(stats[epoch]["valid"]["loss"])
            history["seconds"].append(sum(seconds(stats[epoch][part]["time"]) for part in ("train", "valid")))
    return history


def summarise(recipe: Path, entry: Entry, tag: str, seed: int, test_set: str) -> Run:
    import yaml

    from espnet_lowrank.guide import finish_guides
    from espnet_lowrank.model_config import build_model, count_parameters
    from espnet_lowrank.stages.score import score_set, scored_decode_dir

    exp = recipe / "exp" / f"asr_{tag}"
    history = training_history(exp)
    # the decoding this compare's stages 12-13 made, not the newest: an exp dir decoded
    # again by hand with another inference config holds both
    decode_dir = scored_decode_dir(exp / "RESULTS.md", test_set)
    scores = score_set(recipe / "dump" / "raw" / test_set / "text", decode_dir / test_set / "text")
    # the model that is decoded: the training config with the run's vocabulary
    # (the saved config.yaml names a stats file relative to the recipe dir),
    # its guides, if any, gone
    tokens = yaml.safe_load((exp / "config.yaml").read_text())["token_list"]
    decoded = finish_guides(build_model(entry.config, token_list=tokens))
    return Run(
        tag=tag, seed=seed, params=count_parameters(decoded),
        epochs=history["epochs"], valid_acc=history["valid_acc"], valid_loss=history["valid_loss"],
        train_seconds=sum(history["seconds"]),
        wer=scores["WER"].error_rate, cer=scores["CER"].error_rate,
    )


def split_run_args(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """A tool's own options, and the ``run.sh`` options after ``--``."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    return argv[: argv.index("--")], argv[argv.index("--") + 1:]


def merged_asr_args(options: Sequence[str]) -> List[str]:
    """run.sh options with every ``--asr_args`` joined into one, in order: run.sh keeps only the
    last it is given, so the options for every run and a run's own (its seed) would drop each other."""
    rest, extra, words = [], [], list(options)
    while words:
        word = words.pop(0)
        if word == "--asr_args" and words:
            extra.append(words.pop(0))
        elif word.startswith("--asr_args="):
            extra.append(word.split("=", 1)[1])
        else:
            rest.append(word)
    return [*rest, "--asr_args", " ".join(extra)] if extra else rest


def with_asr_args(options: Sequence[str], extra: str) -> List[str]:
    """run.sh options whose ``--asr_args`` also carry ``extra`` (last, so they win)."""
    return merged_asr_args([*options, "--asr_args", extra])


def with_seed(options: Sequence[str], seed: int) -> List[str]:
    """run.sh options that also give ESPnet ``--seed``."""
    return with_asr_args(options, f"--seed {seed}")


def _values(runs: Sequence[Run], name: str) -> str:
    values = [getattr(r, name) for r in runs]
    mean = f"{statistics.mean(values):.1f}"
    return mean if len(values) == 1 else f"{mean} ({' / '.join(f'{v:.1f}' for v in values)})"


def markdown(rows: List[Dict], jobs: int = 1) -> str:
    """One line per entry: its runs' mean, and each run's value when there are several.
    Runs trained several at a time get no time ratio: they slowed each other unevenly."""
    first = rows[0]["runs"]
    first_params = first[0].params
    first_seconds = statistics.mean(r.train_seconds for r in first)
    lines = [
        "| config (+ run.sh options) | params (M) | fewer than first | epochs | training time (min) "
        "| vs first | test WER % | test CER % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        runs = row["runs"]
        minutes = statistics.mean(r.train_seconds for r in runs) / 60
        ratio = f"{minutes * 60 / first_seconds:.2f}×" if jobs == 1 else "–"
        lines.append(
            f"| `{row['name']}` | {runs[0].params / 1e6:.2f} | {first_params / runs[0].params:.2f}× | "
            f"{len(runs[0].epochs)} | {minutes:.1f} | {ratio} | {_values(runs, 'wer')} | {_values(runs, 'cer')} |"
        )
    seeds = sorted({r.seed for row in rows for r in row["runs"]})
    if len(seeds) > 1:
        lines.append(f"\nWhere an entry ran with several seeds ({', '.join(map(str, seeds))}): the mean, "
                     "then each run's value in seed order.")
    if jobs > 1:
        lines.append(f"\nTrained {jobs} runs at a time (`--jobs {jobs}`): the training times shared the machine, "
                     "so they are not compared.")
    return "\n".join(lines)


def plot(rows: List[Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (acc, loss) = plt.subplots(1, 2, figsize=(13, 4.5))
    colours = plt.get_cmap("tab20").colors
    for index, row in enumerate(rows):
        for number, run in enumerate(row["runs"]):
            style = dict(color=colours[index % len(colours)], linestyle=("-", "--", ":")[number % 3],
                         marker="o", markersize=3, label=run.tag)
            acc.plot(run.epochs, run.valid_acc, **style)
            loss.plot(run.epochs, run.valid_loss, **style)
    acc.set(title="validation accuracy (attention decoder, teacher forced)", xlabel="epoch", ylabel="acc")
    loss.set(title="validation loss", xlabel="epoch", ylabel="loss")
    for axis in (acc, loss):
        axis.grid(alpha=0.3)
    # one legend under both plots: inside, it hides the curves it names
    handles = acc.get_legend_handles_labels()
    columns = 3
    figure.legend(*handles, loc="lower center", ncol=columns, fontsize=7)
    legend_rows = (len(handles[0]) + columns - 1) // columns
    figure.set_size_inches(13, 4.5 + 0.22 * legend_rows)
    figure.tight_layout(rect=(0, 0.22 * legend_rows / (4.5 + 0.22 * legend_rows) + 0.02, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_sh(recipe: Path, *options: str, log: Optional[Path] = None, side_by_side: int = 1) -> None:
    """One run.sh call; its output to ``log`` if given, else to ours. One of ``side_by_side``
    runs at a time gets that share of the threads (OMP_NUM_THREADS), for every process it starts:
    torch processes that each take every core slow each other many times over."""
    command = [str(ROOT / "run.sh"), "--python", sys.executable, *options]
    # one print per line: runs started side by side must not interleave their lines
    print(f"+ {shlex.join(command)}" + (f" > {log}" if log else ""), file=sys.stderr, flush=True)
    environment = job_environment(side_by_side) if side_by_side > 1 else None
    if log is None:
        subprocess.run(command, cwd=recipe, check=True, env=environment)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as output:
        if subprocess.run(command, cwd=recipe, stdout=output, stderr=subprocess.STDOUT, env=environment).returncode:
            raise RuntimeError(f"run.sh {shlex.join(options)} failed: see {log}")


def config_seed(config: Path) -> Optional[int]:
    from espnet_lowrank.model_config import read_config

    return read_config(config).get("seed")


def planned_runs(entries: Sequence[Entry], seeds: Sequence[int]) -> List[Tuple[Entry, int, str, List[str]]]:
    """(entry, seed, tag, its run.sh options) of every run, entries in order, seeds in order."""
    plan = []
    for entry in entries:
        own_seed = config_seed(entry.config)
        for seed in entry.seeds or seeds or [own_seed]:
            tag, options = entry.tag, list(entry.options)
            if seed != own_seed:
                tag, options = f"{tag}_seed{seed}", with_seed(options, seed)
            plan.append((entry, seed, tag, options))
    return plan


def compare(recipe: Path, entries: Sequence[Entry], out: Path, test_set: str,
            run_args: Sequence[str], seeds: Sequence[int] = (), jobs: int = 1) -> str:
    run_sh(recipe, "--stop_stage", "5", *run_args)
    if jobs > 1:  # the feature statistics all runs share, made once before they start side by side
        run_sh(recipe, "--stage", "10", "--stop_stage", "10", "--asr_config", str(entries[0].config.resolve()),
               *run_args)
    plan = planned_runs(entries, seeds)

    def make(run: Tuple[Entry, int, str, List[str]]) -> None:
        entry, _, tag, options = run
        log = out.parent / f"{out.name}_logs" / f"{tag}.log" if jobs > 1 else None
        run_sh(recipe, "--stage", "10", "--stop_stage", "13", "--asr_config", str(entry.config.resolve()),
               "--asr_tag", tag, "--test_sets", test_set, *merged_asr_args([*run_args, *options]), log=log,
               side_by_side=jobs)

    if jobs == 1:  # one after another, stopping at the first that fails
        for run in plan:
            make(run)
    else:  # side by side: a failed run stops none of the others, and all failures are named at the end
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            outcomes = [pool.submit(make, run) for run in plan]
        failed = [str(outcome.exception()) for outcome in outcomes if outcome.exception()]
        if failed:
            raise RuntimeError("; ".join(failed))
    rows = []
    for entry in entries:
        runs = [summarise(recipe, entry, tag, seed, test_set) for e, seed, tag, _ in plan if e is entry]
        rows.append({"name": entry.name, "runs": runs})
    table = markdown(rows, jobs)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table + "\n")
    out.with_suffix(".json").write_text(json.dumps(
        [{"name": r["name"], "runs": [asdict(run) for run in r["runs"]]} for r in rows], indent=1))
    plot(rows, out.with_suffix(".png"))
    return table


@one_line_errors
def main(argv: Optional[Sequence[str]] = None) -> None:
    argv, run_args = split_run_args(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe_dir", type=Path, required=True)
    parser.add_argument("--configs", nargs="+", required=True,
                        help='config paths, each optionally with run.sh options: "conf/x.yaml --opt value"')
    parser.add_argument("--seeds", type=int, nargs="*", default=[],
                        help="train every config once per seed (default: once, with the config's seed)")
    parser.add_argument("--out", type=Path, required=True, help="writes <out>.md, <out>.json and <out>.png")
    parser.add_argument("--test_set", default="test")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at a time (default 1: one after another, times comparable)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: give 1 or more")
    entries = [Entry.parse(text) for text in args.configs]
    for entry in entries:
        if not entry.config.is_file():
            parser.error(f"--configs: {entry.config} does not exist")
    print(compare(args.recipe_dir, entries, args.out, args.test_set, run_args, args.seeds, args.jobs))


if __name__ == "__main__":
    main()
