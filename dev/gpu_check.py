"""The GPU check: what a lent CUDA machine should measure, in one run: ``python dev/gpu_check.py``.

    python dev/gpu_check.py --recipe_dir egs2/embedded/asr1 --out gpu_check.md [--quick]

writes one Markdown report (``local/gpu_check.sh`` runs it):

1. Layers, encoder and decoder on the device: full-rank factors reproduce the
   dense layer in fp32; the LR-SMS encoder and decoder under bf16 autocast stay
   within tolerance of fp32; a training step runs forward and backward.
2. ``espnet-lowrank bench`` of dense vs LR-SMS vs LR-SMS with low-rank
   subsampling at the batch ESPnet's LibriSpeech-100 recipe trains on
   (``batch_bins`` 16000000, about 40 utterances of 12 s), bf16 then fp32,
   each eager and compiled, the low-rank configs also memory-lean
   (``--recompute``), with peak memory and the profiler's top kernels.
3. One epoch of the tiny embedded corpus through run.sh with ``--ngpu 1``,
   ``use_amp: true`` and ``--compile true``.

Without CUDA, part 1 runs on the CPU and parts 2-3 are reported as not run:
the report says CUDA is absent rather than faking a number. ``--quick``
runs part 2 on whatever device there is, at a toy batch (a smoke run).
"""

import argparse
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Sequence

import torch

from espnet_lowrank.tools.command import command_main
from espnet_lowrank.errors import InputError
from espnet_lowrank.studies.recipe import Recipe

#: the configs benched at the LibriSpeech-100 shape, in the recipe's conf/tuning/
BENCHED = ("train_asr_conformer", "train_asr_lrsms", "train_asr_lrsms_subsampling")


def device_name(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    from espnet_lowrank import machine

    return f"{machine.describe()} (CUDA absent), torch {torch.__version__}"


def layer_checks(device: str, configs: List[Path]) -> List[str]:
    """Markdown rows: check, measured value, tolerance, pass."""
    from espnet_lowrank.layers import LowRankLinear
    from espnet_lowrank.model_config import build_model

    rows = []
    torch.manual_seed(0)
    dense = torch.nn.Linear(256, 1024).to(device)
    full = LowRankLinear.from_dense(dense, 256, "svd", "pytorch").to(device)
    x = torch.randn(64, 256, device=device)
    error = (full(x) - dense(x)).abs().max().item()
    rows.append(_row("full-rank factors = dense layer, fp32 (max abs diff)", error, 1e-4))
    model = build_model(configs[1], vocab_size=5000).to(device).eval()
    speech = torch.randn(2, 16000 * 4, device=device)
    lengths = torch.full((2,), speech.shape[1], device=device)
    with torch.no_grad():
        exact, _ = model.encode(speech, lengths)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            low, _ = model.encode(speech, lengths)
    relative = ((low.float() - exact).norm() / exact.norm()).item()
    rows.append(_row("LR-SMS encoder, bf16 autocast vs fp32 (relative error)", relative, 5e-2))
    model.train()
    text = torch.randint(1, 4999, (2, 20), device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        loss = model(speech, lengths, text, torch.full((2,), 20, device=device))[0]
    loss.backward()
    finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    rows.append(f"| LR-SMS encoder + decoder training step, bf16 (finite loss and gradients) | "
                f"{loss.item():.1f} | finite | {'pass' if finite and torch.isfinite(loss) else 'FAIL'} |")
    return rows


def _row(check: str, value: float, tolerance: float) -> str:
    return f"| {check} | {value:.2e} | ≤ {tolerance:.0e} | {'pass' if value <= tolerance else 'FAIL'} |"


def bench_sections(configs: List[Path], device: str, quick: bool) -> Iterator[List[str]]:
    from espnet_lowrank.tools.bench import bench, format_results
    from espnet_lowrank.recipe_batch import LIBRISPEECH_100_BATCH_BINS

    batch = dict(batch_bins=LIBRISPEECH_100_BATCH_BINS, seconds=12.0, vocab=5000, repeats=3, profile=15)
    amps = ("bf16", "none")  # bf16 first: the target is stated there
    if quick:
        batch = dict(batch_bins=120000, seconds=0.5, vocab=50, repeats=1, profile=3)
        amps = ("bf16",)
    for amp in amps:
        result = bench([str(c) for c in configs], text_length=40, warmup=1, device=device, amp=amp,
                       modes=("eager", "compiled"), recompute=True, **batch)
        yield [f"### bench at the recipe's batch, amp {amp}", "", "```", format_results(result), "```", ""]


def tiny_epoch_on_gpu(recipe: Recipe) -> str:
    """One epoch of the tiny corpus through run.sh (the demo's LR-SMS), --ngpu 1, use_amp, compiled."""
    with tempfile.TemporaryDirectory() as tmp:
        scratch = recipe.scratch(Path(tmp) / "recipe")
        started = time.time()
        try:
            scratch.run("--embedded_size", "tiny", "--ngpu", "1", "--stop_stage", "11",
                        "--asr_config", "conf/train_asr_lrsms_demo.yaml",
                        "--asr_args", "--max_epoch 1 --use_amp true --compile true", log=Path(tmp) / "run.log")
            outcome = "pass"
        except InputError:
            outcome = "FAIL"
        took = time.time() - started
        last = ((Path(tmp) / "run.log").read_text().strip().splitlines() or [""])[-1]
    return f"| run.sh stages 1-11, tiny corpus, --ngpu 1, use_amp, --compile | {outcome} | {took:.0f} s | {last} |"


def report_sections(recipe: Recipe, quick: bool = False, configs: Sequence[Path] = ()) -> Iterator[List[str]]:
    """The report's parts in order, each as soon as it is measured."""
    configs = list(configs) or [recipe.path / "conf" / "tuning" / f"{name}.yaml" for name in BENCHED]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    yield [f"# GPU check: {device_name(device)}", "",
           f"## Layers, encoder and decoder on {device}", "",
           "| check | measured | tolerance | result |", "|---|---:|---:|---|", *layer_checks(device, configs), ""]
    if device != "cuda" and not quick:
        yield ["CUDA is absent on this machine: the bench of dense vs LR-SMS on the GPU "
               "and the --ngpu 1 training epoch were not run.", ""]
        return
    yield ["## Training speed and memory at the LibriSpeech-100 recipe's batch", ""]
    yield from bench_sections(configs, device, quick)
    if device != "cuda":
        return
    yield ["## One epoch with --ngpu 1, use_amp and --compile", "", "| run | result | time | last line |",
           "|---|---|---:|---|", tiny_epoch_on_gpu(recipe), ""]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe_dir", type=Path, default=Path("egs2/embedded/asr1"),
                        help="its conf/tuning configs are benched, its run.sh trains the epoch")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.md"))
    parser.add_argument("--configs", nargs="+", type=Path, default=[],
                        help="dense first, then low-rank configs to bench (default: the recipe's "
                             + ", ".join(BENCHED) + ")")
    parser.add_argument("--quick", action="store_true",
                        help="one bench repeat at a toy batch, on the CPU too (a smoke run)")


def run(args: argparse.Namespace) -> None:
    recipe = Recipe(args.recipe_dir.resolve())
    lines: List[str] = []
    for section in report_sections(recipe, args.quick, args.configs):
        # rewritten after each part, so a run cut off by its time limit keeps what it measured
        lines += section
        args.out.write_text("\n".join(lines))
        print("\n".join(section), flush=True)


main = command_main(__doc__, add_arguments, run)

if __name__ == "__main__":
    main()
