"""Train, decode and score several configs on the same data with the same
budget, and put them side by side: ``python -m espnet_lowrank.tools.compare``.

    python -m espnet_lowrank.tools.compare --recipe_dir egs2/embedded/asr1 \\
        --configs conf/compare/*.yaml --out docs/results

runs ``run.sh`` stages 1-5 once, then stages 10-13 for each config (each in
``exp/asr_<config name>``), and writes ``<out>.md`` (parameters, training time
per epoch, test WER/CER) and ``<out>.png`` (validation accuracy and loss per
epoch for every run). Extra ``run.sh`` options go after ``--``.
"""

import argparse
import datetime
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[2]


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


def summarise(recipe: Path, config: Path, tag: str, test_set: str) -> Dict:
    import yaml

    from espnet_lowrank.model_config import build_model, count_parameters
    from espnet_lowrank.stages.score import score_set

    exp = recipe / "exp" / f"asr_{tag}"
    stats = epoch_stats(exp)
    epochs = sorted(stats)
    # the decoding stage 12 just wrote: an exp dir may hold older ones too
    hypotheses = sorted(exp.glob(f"decode_*/{test_set}/text"), key=lambda p: p.stat().st_mtime)
    if not hypotheses:
        raise FileNotFoundError(f"{exp} has no decode_*/{test_set}/text: did stage 12 run?")
    scores = score_set(recipe / "dump" / "raw" / test_set / "text", hypotheses[-1])
    return {
        "config": config.name, "tag": tag,
        # the training config with the run's vocabulary (the saved config.yaml
        # names a stats file relative to the recipe dir)
        "params": count_parameters(build_model(config, token_list=yaml.safe_load(
            (exp / "config.yaml").read_text())["token_list"])),
        "epochs": epochs,
        "epoch_seconds": statistics.median(seconds(stats[e]["train"]["time"]) for e in epochs),
        "valid_acc": [stats[e]["valid"]["acc"] for e in epochs],
        "valid_loss": [stats[e]["valid"]["loss"] for e in epochs],
        "wer": scores["WER"].error_rate, "cer": scores["CER"].error_rate,
    }


def markdown(rows: List[Dict]) -> str:
    lines = [
        "| config | params (M) | train time / epoch (s) | epochs | test WER % | test CER % |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['config']}` | {r['params'] / 1e6:.2f} | {r['epoch_seconds']:.1f} | "
            f"{len(r['epochs'])} | {r['wer']:.1f} | {r['cer']:.1f} |"
        )
    return "\n".join(lines)


def plot(rows: List[Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (acc, loss) = plt.subplots(1, 2, figsize=(12, 4))
    for r in rows:
        acc.plot(r["epochs"], r["valid_acc"], marker="o", label=r["tag"])
        loss.plot(r["epochs"], r["valid_loss"], marker="o", label=r["tag"])
    acc.set(title="validation accuracy (attention decoder, teacher forced)", xlabel="epoch", ylabel="acc")
    loss.set(title="validation loss", xlabel="epoch", ylabel="loss")
    for axis in (acc, loss):
        axis.grid(alpha=0.3)
    # one legend under both plots: inside, it hides the curves it names
    figure.legend(*acc.get_legend_handles_labels(), loc="lower center", ncol=min(len(rows), 4), fontsize=8)
    figure.tight_layout(rect=(0, 0.06 * ((len(rows) + 3) // 4), 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_sh(recipe: Path, *options: str) -> None:
    command = [str(ROOT / "run.sh"), "--python", sys.executable, *options]
    print("+", " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, cwd=recipe, check=True)


def compare(recipe: Path, configs: Sequence[Path], out: Path, test_set: str, run_args: Sequence[str]) -> str:
    run_sh(recipe, "--stop_stage", "5", *run_args)
    rows = []
    for config in configs:
        tag = config.stem
        run_sh(recipe, "--stage", "10", "--stop_stage", "13", "--asr_config", str(config.resolve()),
               "--asr_tag", tag, "--test_sets", test_set, *run_args)
        rows.append(summarise(recipe, config, tag, test_set))
    table = markdown(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table + "\n")
    plot(rows, out.with_suffix(".png"))
    return table


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    run_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe_dir", type=Path, required=True)
    parser.add_argument("--configs", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True, help="writes <out>.md and <out>.png")
    parser.add_argument("--test_set", default="test")
    args = parser.parse_args(argv)
    for config in args.configs:
        if not config.is_file():
            parser.error(f"--configs: {config} does not exist")
    print(compare(args.recipe_dir, args.configs, args.out, args.test_set, run_args))


if __name__ == "__main__":
    main()
