"""What our training adds to ESPnet's trainer, whichever door starts it.

Registration (:mod:`espnet_lowrank.registration`) brings these to every training
of a model that uses our classes (stock ``espnet2.bin.asr_train`` included)
and to every training our own ``asr_train`` runs, dense warm-ups too:

* the options ESPnet lacks (:data:`OPTIONS`), so they are in the parser,
  ``--print_config`` and the run's ``config.yaml``;
* crash-safe checkpoints (:mod:`espnet_lowrank.checkpoints`);
* a stop, in one line, for a training whose loss stays non-finite
  (:mod:`espnet_lowrank.divergence`);
* bf16 autocast for a CPU training, where asked (:mod:`espnet_lowrank.cpu_precision`);
* a cheaper CPU training step, the same model (:mod:`espnet_lowrank.cpu_step`).

Only a training acts on the options: a model built to decode (``Speech2Text``
reads them from ``config.yaml`` too) is neither compiled nor guarded.
"""

import argparse
import sys
from pathlib import Path

from espnet_lowrank import cpu_precision, cpu_step, divergence
from espnet_lowrank.checkpoints import install_atomic_save, recover_checkpoint

#: name, kind (ESPnet's argument type, or our choices), default and help of each option
OPTIONS = (
    ("compile", "str2bool", False,
     "torch.compile every encoder and decoder block (dynamic shapes); checkpoints keep their keys"),
    ("lowrank_recompute", "str2bool", False,
     "factorised layers keep only their input for the backward pass and recompute V·x there: "
     "no more activation memory than dense"),
    ("stop_after_nonfinite_steps", "int", divergence.DEFAULT_LIMIT,
     "end the training, naming the last good checkpoint, after this many training steps in a row with a "
     "non-finite loss (0: never)"),
    ("cpu_bf16", "cpu_bf16", "false",
     "a CPU training's forward passes in bf16 autocast: true, false, or auto (only where the CPU has native "
     "bf16: AMX or AVX512-BF16); weights and checkpoints stay fp32, decoding is not affected"),
    ("cpu_step", "cpu_step", cpu_step.DEFAULT,
     "a cheaper CPU training step, the same model: fast (channels-last 2-D convolutions and dropout masks "
     "from torch.rand: the same Bernoulli masks, another random stream), channels_last (the layout alone) "
     "or stock (as stock ESPnet)"),
)
NAMES = tuple(name for name, *_ in OPTIONS)

#: whether this process has compiled a model for training (its entry point reports the graphs built)
compiling = False


def add_options(parser: argparse.ArgumentParser) -> None:
    """Our options in ``parser`` (once, however often it is called)."""
    from espnet2.utils.types import str2bool

    if f"--{NAMES[0]}" in parser._option_string_actions:
        return
    kinds = {"str2bool": {"type": str2bool}, "int": {"type": int}, "cpu_bf16": {"choices": cpu_precision.SETTINGS},
             "cpu_step": {"choices": cpu_step.SETTINGS}}
    group = parser.add_argument_group("espnet-lowrank training")
    for name, kind, default, help in OPTIONS:
        group.add_argument(f"--{name}", default=default, help=help, **kinds[kind])


def start_worker(args: argparse.Namespace, recover: bool) -> None:
    """Before a training process builds anything: checkpoints are saved whole or not at all, and with
    ``recover`` a resumed single-process run first falls back from a damaged ``checkpoint.pth``
    (a distributed run recovers once, before its processes start: ``python -m espnet_lowrank.checkpoints``)."""
    install_atomic_save()
    if recover and args.resume and not args.distributed:
        recover_checkpoint(Path(args.output_dir))


def prepare_model(model, args: argparse.Namespace) -> None:
    """Apply the options to the model a training has just built."""
    global compiling

    on_cpu = getattr(args, "ngpu", 0) == 0
    if getattr(args, "lowrank_recompute", False):
        from espnet_lowrank.surgery import set_recompute

        print(f"asr_train: {set_recompute(model, True)} factorised layers recompute V·x in the backward pass",
              file=sys.stderr, flush=True)
    step = cpu_step.chosen(getattr(args, "cpu_step", cpu_step.DEFAULT), "cpu" if on_cpu else "cuda")
    for done in cpu_step.apply(model, step):
        print(f"asr_train: {done} (--cpu_step {step})", file=sys.stderr, flush=True)
    if getattr(args, "compile", False):
        from espnet_lowrank.compiling import compile_blocks

        compile_blocks(model)
        compiling = True
    bf16, why = cpu_precision.decide(getattr(args, "cpu_bf16", "false"), on_cpu=on_cpu)
    if bf16:
        cpu_precision.autocast_forward(model)
        why += f"; oneDNN keeps {cpu_precision.keep_primitives()} primitives"
    print(f"asr_train: training in {'bf16 autocast' if bf16 else 'fp32'}: {why}", file=sys.stderr, flush=True)
    limit = getattr(args, "stop_after_nonfinite_steps", divergence.DEFAULT_LIMIT)
    if limit > 0:
        divergence.install(model, Path(args.output_dir), limit)
