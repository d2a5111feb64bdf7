"""bf16 against fp32 over batches of many lengths, as a training meets them: ``python dev/length_mix.py CONFIG``.

    python dev/length_mix.py conf/train_asr_lrsms_demo.yaml --vocab 28 --batch_bins 500000

``espnet-lowrank bench`` times one fixed batch, so every primitive oneDNN builds for a shape is built
once and reused. A training's batches come in many lengths, and oneDNN builds (JIT-compiles) a
primitive for each new shape of its bf16 matrix products; with its default cache of 1024 it builds
them again every pass. This times one training step per length (``--lengths`` lengths from
``--shortest`` to ``--longest`` seconds, each batch holding ``--batch_bins`` samples), fp32 and bf16
autocast alternating step by step in one process, so drift of the machine's speed falls on both;
the first pass builds the primitives and is not counted. Set ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` to
compare caches (our bf16 training sets 16384 unless it is set).
"""

import argparse
import time

import torch
from tqdm import tqdm

from espnet_lowrank import cpu_step
from espnet_lowrank.cpu_precision import features_outside_autocast
from espnet_lowrank.model_config import build_model
from espnet_lowrank.recipe_batch import synthetic_batch
from espnet_lowrank.tools.bench import train_step
from espnet_lowrank.tools.command import command_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="an ESPnet ASR training YAML")
    parser.add_argument("--vocab", type=int, default=28)
    parser.add_argument("--batch_bins", type=int, default=500000, help="audio samples per batch")
    parser.add_argument("--lengths", type=int, default=30, help="distinct utterance lengths")
    parser.add_argument("--shortest", type=float, default=1.0, help="seconds")
    parser.add_argument("--longest", type=float, default=4.6, help="seconds")
    parser.add_argument("--passes", type=int, default=3, help="over all lengths; the first is not counted")
    parser.add_argument("--cpu_step", default=cpu_step.DEFAULT, choices=cpu_step.SETTINGS)


def run(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = build_model(args.config, vocab_size=args.vocab).train()
    cpu_step.apply(model, args.cpu_step)
    features_outside_autocast(model)  # as a bf16 CPU training computes them
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    samples = torch.linspace(args.shortest * 16000, args.longest * 16000, args.lengths).long().tolist()
    batches = [synthetic_batch(0, 0, 0, args.vocab, "cpu", [n] * max(1, args.batch_bins // n),
                               [max(1, n // 1000)] * max(1, args.batch_bins // n)) for n in samples]
    took = {"none": 0.0, "bf16": 0.0}
    for counted in tqdm([False] + [True] * (args.passes - 1), desc="length mix", unit="pass"):
        for batch in batches:
            for amp in took:
                start = time.perf_counter()
                train_step(model, optimizer, batch, "cpu", amp, scaler)
                if counted:
                    took[amp] += time.perf_counter() - start
    steps = len(batches) * (args.passes - 1)
    print(f"{args.config}: {args.lengths} lengths of {args.shortest}-{args.longest} s, {steps} steps each, "
          f"--cpu_step {args.cpu_step}: fp32 {took['none'] / steps:.3f} s/step, bf16 {took['bf16'] / steps:.3f} "
          f"s/step, bf16 speed-up {took['none'] / took['bf16']:.2f}x")


main = command_main(__doc__, add_arguments, run)

if __name__ == "__main__":
    main()
