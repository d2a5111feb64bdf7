"""What ``compare`` reports: a Markdown table (one line per entry, the mean over its seeds and each
run's value), a PNG of every run's validation curves and one of WER against parameters."""

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence


@dataclass
class Run:
    """One trained, decoded and scored run."""

    tag: str
    seed: int
    params: int
    width: int  # the encoder's output size: what a study of width puts on its plot
    epochs: List[int]
    valid_acc: List[float]
    valid_loss: List[float]
    train_seconds: float
    wer: float
    cer: float


def _values(runs: Sequence[Run], name: str) -> str:
    values = [getattr(r, name) for r in runs]
    mean = f"{statistics.mean(values):.1f}"
    return mean if len(values) == 1 else f"{mean} ({' / '.join(f'{v:.1f}' for v in values)})"


def markdown(rows: List[Dict], test_set: str = "test", jobs: int = 1) -> str:
    """One line per entry (``rows``: its name and runs), scored on ``test_set``. WER against the first
    entry's is relative, as accuracy targets are stated. Runs trained several at a time get no time
    ratio: they slowed each other unevenly."""
    first = rows[0]["runs"]
    first_params = first[0].params
    first_seconds = statistics.mean(r.train_seconds for r in first)
    first_wer = statistics.mean(r.wer for r in first)
    lines = [
        "| config (+ run.sh options) | params (M) | fewer than first | epochs | training time (min) "
        f"| vs first | {test_set} WER % | WER vs first | {test_set} CER % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        runs = row["runs"]
        minutes = statistics.mean(r.train_seconds for r in runs) / 60
        ratio = f"{minutes * 60 / first_seconds:.2f}×" if jobs == 1 else "–"
        relative_wer = statistics.mean(r.wer for r in runs) / first_wer - 1
        lines.append(
            f"| `{row['name']}` | {runs[0].params / 1e6:.2f} | {first_params / runs[0].params:.2f}× | "
            f"{len(runs[0].epochs)} | {minutes:.1f} | {ratio} | {_values(runs, 'wer')} | {relative_wer:+.0%} | "
            f"{_values(runs, 'cer')} |"
        )
    seeds = sorted({r.seed for row in rows for r in row["runs"]})
    if len(seeds) > 1:
        lines.append(f"\nWhere an entry ran with several seeds ({', '.join(map(str, seeds))}): the mean, "
                     "then each run's value in seed order.")
        lines.extend(_spread(rows, test_set))
    if jobs > 1:
        lines.append(f"\nTrained {jobs} runs at a time (`--jobs {jobs}`): the training times shared the machine, "
                     "so they are not compared.")
    return "\n".join(lines)


def _spread(rows: List[Dict], test_set: str) -> List[str]:
    """How far one run's WER strays from its entry's mean: what a one-seed number can be trusted to."""
    distances = [(abs(run.wer - statistics.mean(r.wer for r in row["runs"])), row["name"])
                 for row in rows if len(row["runs"]) > 1 for run in row["runs"]]
    if not distances:
        return []
    distance, name = max(distances)
    return [f"The largest distance of one run's {test_set} WER from its entry's mean: {distance:.1f} points "
            f"(`{name}`)."]


def plot_wer(rows: List[Dict], path: Path, test_set: str = "test") -> None:
    """``test_set`` WER against parameters: each entry's mean, its seeds' range as a bar, each run as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab10").colors
    for index, row in enumerate(rows):
        runs, colour = row["runs"], colours[index % len(colours)]
        params, wers = runs[0].params / 1e6, [run.wer for run in runs]
        mean = statistics.mean(wers)
        axis.errorbar([params], [mean], yerr=[[mean - min(wers)], [max(wers) - mean]], color=colour, marker="o",
                      markersize=8, capsize=5, label=_wer_label(row))
        axis.scatter([params] * len(wers), wers, color=colour, s=14, alpha=0.5)
    axis.set(title=f"{test_set} WER against parameters (mean; bar: range over seeds; dots: runs)",
             xlabel="parameters (M)", ylabel=f"{test_set} WER %")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def _wer_label(row: Dict) -> str:
    runs = row["runs"]
    return f"{row['name']} ({runs[0].width} wide, {len(runs)} run{'s' * (len(runs) > 1)})"


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
