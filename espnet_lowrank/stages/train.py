"""Stage 11: train, as run.sh's options say; resumable after kill -9 in every phase.

- **plain**: ESPnet's ``asr_train`` on the config, from its initialisation or from ``--init_param``
  weights (with a fresh optimiser);
- **dense warm-up** (``--lowrank_warmup_epochs E``, Pufferfish): the config's dense twin trains for E
  epochs in ``exp/asr_<tag>/dense_warmup``, its trained weights are factorised by truncated SVD into the
  config's low-rank model (``espnet-lowrank convert``), and that trains for the rest of ``max_epoch``
  with a fresh optimiser and learning-rate warm-up. A dense config has nothing to factorise and trains
  as it is; ``--init_param`` gives the starting weights itself, so it trains without the warm-up.
- **budgeted warm-up** (``--lowrank_param_ratio R`` too): the ranks of the low-rank phase are chosen
  from the warmed-up weights' spectra for R times the dense parameters (``convert --config C
  --param_ratio R``: the layers the config factorises, its ``multiple_of`` and other settings), and
  written as ``dense_warmup/lowrank_config.yaml`` with explicit mappings, which the low-rank phase
  trains (ESPnet saves it as the run's ``config.yaml``, so decoding, packing, report and merge see an
  ordinary low-rank config).
- ``--lowrank_asr_args``: asr_train options for the low-rank phase of a warm-up only (e.g. its own
  learning rate), after ``--asr_args``, so that they win there.

One plan (:func:`plan`) serves both training and ``--print_launch_cmd``, which prints the same steps as
command lines to copy onto the nodes of a multi-node training.

    python -m espnet_lowrank.stages.train {check,run,print} --asr_config C.yaml --asr_exp exp/asr_x ...
"""

import argparse
import errno
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Protocol, Sequence

import yaml

from espnet_lowrank import atomic, cpu_precision
from espnet_lowrank.errors import FREE_SPACE, InputError, nearly_full, one_line_errors
from espnet_lowrank.architectures import BY_CHOICE
from espnet_lowrank.model_config import dense_twin, read_config, uses_low_rank
from espnet_lowrank.stages import StageError, log, marker
from espnet_lowrank.stages.asr_inputs import AsrInputs
from espnet_lowrank.stages.launch import NODE_RANK, Launch, node_lines
from espnet_lowrank.stages.lock import exclusive
from espnet_lowrank.stages.train_options import check_distributed, max_epoch
from espnet_lowrank.threads import threads_per_job

#: Where the dense phase of a warm-up trains, inside the experiment dir.
WARMUP_DIR = "dense_warmup"
#: What a failed ESPnet training leaves as its last telling line in train.log.
ERROR_LINE = re.compile(r"^(ERROR|[A-Za-z.]*(Error|Exception))|^[A-Za-z_.]+: error: ")


@dataclass
class TrainingRequest:
    """A training as run.sh asks stage 11 for it: config, data, options and the warm-up, if any."""

    config: Path
    exp: Path
    inputs: AsrInputs
    stats_dir: Path
    asr_args: str = ""  # every --asr_args run.sh was given, in order
    cpu_bf16: Optional[str] = None  # asr_train's --cpu_bf16, before --asr_args so that these win; None: the config's
    seed: Optional[int] = None  # ESPnet's --seed; None: the config's
    warmup_epochs: int = 0
    param_ratio: Optional[float] = None  # after the warm-up: ranks for this share of the dense parameters
    allocator: str = "energy"  # how the budget chooses them (espnet_lowrank.budget.ALLOCATORS)
    lowrank_asr_args: str = ""  # asr_train options for the warm-up's low-rank phase only
    init_param: str = ""  # path, or path:src:dst
    launch: Launch = field(default_factory=Launch)
    job_threads: int = 0

    def asr_train_options(self, config: Path, out: Path, phase_options: Sequence[str]) -> List[str]:
        """One training run's asr_train options: data, statistics, ``--cpu_bf16``, the user's
        ``--asr_args``, then ``--seed`` and the phase's own, so that these win."""
        stats = self.stats_dir
        options = ["--config", str(config), "--output_dir", str(out), "--resume", "true", *self.inputs.options(),
                   "--normalize", "global_mvn", "--normalize_conf", f"stats_file={stats}/train/feats_stats.npz"]
        for part in ("train", "valid"):
            options += [f"--{part}_shape_file", f"{stats}/{part}/speech_shape",
                        f"--{part}_shape_file", f"{stats}/{part}/text_shape.{self.inputs.token_type}"]
        options += ["--fold_length", "80000", "--fold_length", "150"]
        if self.cpu_bf16 is not None:
            options += ["--cpu_bf16", self.cpu_bf16]
        options += shlex.split(self.asr_args)
        if self.seed is not None:
            options += ["--seed", str(self.seed)]
        options += list(phase_options)
        # the budget's config is written by the step before this one; its guides are the config's
        if self.launch.world_size > 1 and guided(config if config.exists() else self.config):
            # a guide whose weight reached 0 takes no part in the loss, which DDP must be told
            options += ["--unused_parameters", "true"]
        return options

    def marker_state(self) -> dict:
        """What the experiment dir is made from: another config, ``--asr_args``, seed, warm-up,
        starting weights, data, tokens or statistics is another experiment."""
        options = [f"asr_args={self.asr_args}", f"lowrank_warmup_epochs={self.warmup_epochs}"]
        inputs = [str(self.config), str(self.stats_dir / "train"), *self.inputs.marker_inputs()]
        # recorded only when set, so that runs from before these options keep their markers
        if self.init_param:
            options.append(f"init_param={self.init_param}")
            inputs.append(self.init_param.split(":")[0])
        if self.seed is not None:
            options.append(f"seed={self.seed}")
        if self.cpu_bf16 is not None:
            options.append(f"cpu_bf16={self.cpu_bf16}")
        if self.param_ratio is not None:
            options.append(f"lowrank_param_ratio={self.param_ratio}")
            if self.allocator != "energy":
                options.append(f"lowrank_allocator={self.allocator}")
        if self.lowrank_asr_args:
            options.append(f"lowrank_asr_args={self.lowrank_asr_args}")
        return marker.describe(options, inputs)

    def check_param_ratio(self) -> None:
        from espnet_lowrank.budget import ALLOCATORS

        if self.allocator not in ALLOCATORS:
            raise StageError(f"--lowrank_allocator '{self.allocator}' is unknown; choose one of: "
                             f"{' '.join(ALLOCATORS)}")
        if self.lowrank_asr_args and self.warmup_epochs == 0:
            raise StageError(f"--lowrank_asr_args '{self.lowrank_asr_args}' is for the low-rank phase after a dense "
                             "warm-up: give --lowrank_warmup_epochs too, or put them in --asr_args")
        if self.param_ratio is None:
            return
        if not 0 < self.param_ratio < 1:
            raise StageError(f"--lowrank_param_ratio {self.param_ratio}: the low-rank model's share of the dense "
                             "parameters, in (0, 1)")
        if self.warmup_epochs == 0:
            raise StageError(f"--lowrank_param_ratio {self.param_ratio} chooses ranks from a dense warm-up's trained "
                             "weights: give --lowrank_warmup_epochs too")

    def lowrank_epochs(self) -> int:
        """The epochs of the low-rank phase after a dense warm-up; 0 when there is no warm-up."""
        self.check_param_ratio()
        if self.warmup_epochs == 0:
            return 0
        if self.init_param:
            log(f"stage 11: --init_param gives the starting weights: no dense warm-up "
                f"(--lowrank_warmup_epochs {self.warmup_epochs} not used)")
            return 0
        if not uses_low_rank(read_config(self.config)):
            log(f"stage 11: {self.config} is dense: --lowrank_warmup_epochs {self.warmup_epochs} has nothing to "
                "factorise, so it trains as it is")
            return 0
        total = max_epoch(self.config, self.asr_args)
        if not 1 <= self.warmup_epochs < total:
            raise StageError(
                f"stage 11: --lowrank_warmup_epochs {self.warmup_epochs} must be at least 1 and less than "
                f"max_epoch ({total}), which counts the warm-up and the low-rank epochs together")
        return total - self.warmup_epochs


def guided(config: Path) -> bool:
    values = read_config(config)
    return any(isinstance(values.get(f"{part}_conf"), dict) and values[f"{part}_conf"].get("lowrank_guide")
               for part in ("encoder", "decoder"))


class Step(Protocol):
    """One step of stage 11's plan."""

    def done(self) -> bool:
        """Whether an earlier run finished it (a step that resumes says False)."""

    def prepare(self) -> None:
        """Write what its commands read (cheap, idempotent)."""

    def run(self) -> None:
        """Do it here, now."""

    def commands(self) -> List[List[str]]:
        """Its command lines, for one node (``NODE_RANK`` stands for the node's rank)."""


@dataclass
class Training:
    """One ESPnet training run into ``out``, resumed from its checkpoint if it has one."""

    stage: TrainingRequest
    title: str
    config: Path
    out: Path
    phase_options: List[str] = field(default_factory=list)
    finished_marker: Optional[Path] = None  # written when it ends (a phase of a longer plan)
    dense_twin_of: Optional[Path] = None  # the config is written as this config's dense twin

    def done(self) -> bool:
        return self.finished_marker is not None and self.finished_marker.exists()

    def prepare(self) -> None:
        if self.dense_twin_of is not None:
            write_dense_config(self.dense_twin_of, self.config)

    def options(self) -> List[str]:
        return self.stage.asr_train_options(self.config, self.out, self.phase_options)

    def commands(self) -> List[List[str]]:
        launch = self.stage.launch
        recover = []  # once per node before the processes start, not in each of them
        if launch.world_size > 1:
            recover = [[launch.python, "-m", "espnet_lowrank.checkpoints", str(self.out)]]
        return [*recover, launch.command(self.options(), node_rank=NODE_RANK)]

    def run(self) -> None:
        from espnet_lowrank.checkpoints import recover_checkpoint

        launch = self.stage.launch
        log(f"stage 11: {self.title} (log: {self.out}/train.log)")
        self.prepare()
        self.out.mkdir(parents=True, exist_ok=True)
        train_log = self.out / "train.log"
        train_log.touch()
        if launch.world_size > 1:  # the processes each resume; the damaged-checkpoint check runs once, here
            recover_checkpoint(self.out)
        environment = dict(os.environ)
        # several processes divide the threads; one takes --job_threads if given (runs side by side)
        if launch.processes_here > 1 or self.stage.job_threads > 0:
            threads = threads_per_job(launch.processes_here, self.stage.job_threads)
            environment["OMP_NUM_THREADS"] = str(threads)
            log(f"stage 11: {launch.processes_here} training process(es), {threads} thread(s) each")
        epochs = max_epoch(self.config, shlex.join([*shlex.split(self.stage.asr_args), *self.phase_options]))
        start = train_log.stat().st_size
        with train_log.open("a") as output:
            process = subprocess.Popen(launch.command(self.options()), stdout=output, stderr=subprocess.STDOUT,
                                       env=environment)
            show_epochs(train_log, epochs, process, start)
        if process.returncode:
            errors = [line for line in train_log.read_text(errors="replace").splitlines() if ERROR_LINE.search(line)]
            full = os.strerror(errno.ENOSPC)
            if nearly_full(self.out) and not (errors and full in errors[-1]):
                # it could not log why, or a writer that met the full disk died of an error of its own
                # (ESPnet's PNG plots: AttributeError: '_idat' object has no attribute 'fileno')
                died = f" (it died of: {errors[-1].strip()})" if errors else ""
                errors.append(f"{full} in {self.out}{died}")
            hint = f": {FREE_SPACE} (finished epochs are kept)" if errors and full in errors[-1] else ""
            raise StageError(f"stage 11 failed: {errors[-1] if errors else f'exit {process.returncode}'} "
                             f"(see {train_log}){hint}")
        if self.finished_marker is not None:
            self.finished_marker.touch()


def show_epochs(train_log: Path, epochs: int, process: subprocess.Popen, start: int) -> None:
    """The console shows each epoch as it ends while ``process`` trains; everything else stays in the log."""
    from espnet_lowrank.stages.progress import follow

    follower = threading.Thread(target=follow, args=(train_log, epochs, lambda: process.poll() is None),
                                kwargs=dict(start=start), daemon=True)
    follower.start()
    try:
        process.wait()
    except BaseException:  # Ctrl-C or a stop signal: the training goes with run.sh
        process.terminate()
        process.wait()
        raise
    follower.join()


@dataclass
class Factorisation:
    """The warmed-up dense model, factorised into the config's low-rank model (exact at full rank), or
    with ``--lowrank_param_ratio`` into the ranks a budget chooses from its spectra."""

    stage: TrainingRequest
    warmup: Path
    epochs: int

    @property
    def out(self) -> Path:
        return self.warmup / "lowrank_init.pth"

    @property
    def config(self) -> Path:
        """The low-rank phase's config: the budget's, or the run's own."""
        return self.stage.config if self.stage.param_ratio is None else self.warmup / "lowrank_config.yaml"

    @property
    def dense_model(self) -> Path:
        return self.warmup / f"{self.epochs}epoch.pth"

    def done(self) -> bool:
        return self.out.exists()

    def prepare(self) -> None:
        pass

    def timing(self):
        """Where ``no_slower`` times the layers: this recipe's training batch, on its training device."""
        from espnet_lowrank.layer_speed import Timing

        stats = self.stage.stats_dir / "train"
        return Timing((str(stats / "speech_shape"), str(stats / f"text_shape.{self.stage.inputs.token_type}")),
                      "cuda" if self.stage.launch.ngpu > 0 else "cpu")

    def commands(self) -> List[List[str]]:
        budget = [] if self.stage.param_ratio is None else [
            "--param_ratio", str(self.stage.param_ratio), "--allocator", self.stage.allocator,
            "--out_config", str(self.config)]
        if self.stage.allocator == "no_slower":
            timing = self.timing()
            budget += ["--shape_files", *timing.shape_files, "--time_device", timing.device]
        return [[self.stage.launch.python, "-m", "espnet_lowrank.cli", "convert",
                 "--dense_config", str(self.warmup / "config.yaml"), "--dense_model", str(self.dense_model),
                 "--config", str(self.stage.config), *budget, "--out", str(self.out)]]

    def run(self) -> None:
        from espnet_lowrank.conversion import convert, convert_by_budget
        from espnet_lowrank.tools.convert import format_energy, format_ranks

        dense_config, ratio = self.warmup / "config.yaml", self.stage.param_ratio
        log(f"stage 11: factorise the warmed-up dense model into {self.out}"
            + ("" if ratio is None else f", ranks for {ratio} of its parameters"))
        try:
            if ratio is None:
                chosen, rows = "", convert(dense_config, self.dense_model, self.stage.config, self.out)
            else:
                _, result, rows = convert_by_budget(dense_config, self.dense_model, ratio, self.out,
                                                    out_config=self.config, like=self.stage.config,
                                                    allocator=self.stage.allocator, timing=self.timing())
                chosen = f"wrote {self.config}\n{format_ranks(result)}\n"
                log(f"stage 11: {format_ranks(result).splitlines()[-1]}")
        except InputError as error:
            raise StageError(f"stage 11: factorising the warmed-up model failed: {error}") from error
        (self.warmup / "convert.log").write_text(f"{chosen}wrote {self.out}: {len(rows)} factorised layers\n"
                                                 f"{format_energy(rows)}\n")


def write_dense_config(config: Path, out: Path) -> None:
    """The config's dense twin (its low-rank settings off), for the warm-up."""
    values = read_config(config)
    if not uses_low_rank(values):
        raise StageError(f"stage 11: --lowrank_warmup_epochs needs a low-rank model, but {config} uses neither "
                         f"{' nor '.join(BY_CHOICE)}")
    atomic.write_text(out, f"# The dense twin of {config} (its low-rank settings off), trained for the warm-up.\n"
                      + yaml.safe_dump(dense_twin(values), sort_keys=False))


def plan(stage: TrainingRequest) -> List[Step]:
    """Stage 11's steps, in order."""
    lowrank_epochs = stage.lowrank_epochs()
    if lowrank_epochs == 0:
        start = ["--init_param", stage.init_param] if stage.init_param else []
        return [Training(stage, f"train {stage.exp} ({stage.config})", stage.config, stage.exp, start)]
    warmup = stage.exp / WARMUP_DIR
    factorised = Factorisation(stage, warmup, stage.warmup_epochs)
    return [
        Training(stage, f"dense warm-up, {stage.warmup_epochs} epochs", warmup / "dense_config.yaml", warmup,
                 ["--max_epoch", str(stage.warmup_epochs)], warmup / ".done", dense_twin_of=stage.config),
        factorised,
        Training(stage, f"low rank from the warm-up, {lowrank_epochs} epochs", factorised.config, stage.exp,
                 [*shlex.split(stage.lowrank_asr_args),  # before the plan's own, which must hold
                  "--init_param", str(factorised.out), "--max_epoch", str(lowrank_epochs)]),
    ]


def train(stage: TrainingRequest) -> None:
    """Stage 11, from where an earlier run of it stopped."""
    from espnet_lowrank.model_config import check_training_config

    with exclusive(stage.exp):
        state = stage.marker_state()
        done = stage.exp / ".done"
        hint = f"Use another --asr_tag to train from them, or delete {stage.exp} to train again."
        if marker.check(done, "11", "stop", hint, state) == marker.SKIP:
            return
        # a bad option, group or rank stops here in one line, not in train.log
        params = check_training_config(stage.config, stage.inputs.token_list)
        log(f"stage 11: {stage.config}: {params / 1e6:.2f} M parameters")
        marker.record(done, state, finished=False)
        for step in plan(stage):
            if not step.done():
                step.run()
        marker.record(done, state, finished=True)


def print_commands(stage: TrainingRequest) -> None:
    """Stage 11 of this run as command lines to copy (run stages 1-10 first, on storage every node sees)."""
    steps = plan(stage)
    for step in steps:
        step.prepare()
    print(f"# stage 11 of {stage.exp}, after stages 1-10 ({len(steps)} step(s) in order on every node):")
    print("\n".join(node_lines(stage.launch, Path.cwd(), [line for step in steps for line in step.commands()])))


def check(stage: TrainingRequest) -> None:
    """What would stop stage 11 (or 12) later, refused before anything starts."""
    launch = stage.launch
    launch.check()
    stage.check_param_ratio()
    if launch.ngpu > 0:
        import torch

        visible = torch.cuda.device_count()
        if launch.ngpu > visible:
            raise StageError(f"--ngpu {launch.ngpu}: torch sees {visible} GPU(s) on this machine "
                             "(--ngpu 0 trains on CPU)")
    if launch.world_size > 1:
        check_distributed(stage.config, stage.asr_args, launch.world_size)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("command", choices=["check", "run", "print"])
    parser.add_argument("--asr_config", type=Path, required=True)
    parser.add_argument("--asr_exp", type=Path, required=True)
    parser.add_argument("--stats_dir", type=Path, required=True)
    AsrInputs.add_arguments(parser)
    parser.add_argument("--asr_args", default="")
    parser.add_argument("--seed", default="", help="ESPnet's --seed; empty: the config's")
    parser.add_argument("--cpu_bf16", default="", choices=("", *cpu_precision.SETTINGS),
                        help="a CPU training's precision (asr_train --cpu_bf16); empty: the config's")
    parser.add_argument("--lowrank_warmup_epochs", type=int, default=0)
    parser.add_argument("--lowrank_param_ratio", default="", help="empty: the config's ranks")
    parser.add_argument("--lowrank_allocator", default="energy", help="how a --lowrank_param_ratio budget "
                        "chooses the ranks (convert --allocator)")
    parser.add_argument("--lowrank_asr_args", default="", help="asr_train options for the warm-up's low-rank "
                        "phase only")
    parser.add_argument("--init_param", default="")
    parser.add_argument("--job_threads", type=int, default=0)
    for name in ("ngpu", "num_procs", "num_nodes", "node_rank", "master_port"):
        parser.add_argument(f"--{name}", type=int, default=Launch.__dataclass_fields__[name].default)
    for name in ("master_addr", "dist_backend"):
        parser.add_argument(f"--{name}", default=Launch.__dataclass_fields__[name].default)


def from_args(args: argparse.Namespace) -> TrainingRequest:
    launch = Launch(args.ngpu, args.num_procs, args.num_nodes, args.node_rank, args.master_addr, args.master_port,
                    args.dist_backend)
    seed = int(args.seed) if str(args.seed).strip() else None
    ratio = str(args.lowrank_param_ratio).strip()
    try:
        param_ratio = float(ratio) if ratio else None
    except ValueError:
        raise StageError(f"--lowrank_param_ratio {ratio!r}: the low-rank model's share of the dense parameters, "
                         "a number in (0, 1)") from None
    return TrainingRequest(args.asr_config, args.asr_exp, AsrInputs.from_args(args), args.stats_dir, args.asr_args,
                           args.cpu_bf16 or None, seed, args.lowrank_warmup_epochs, param_ratio,
                           args.lowrank_allocator, args.lowrank_asr_args, args.init_param, launch, args.job_threads)


@one_line_errors
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    stage = from_args(args)
    # a stop signal ends the training process too (see show_epochs), not only this one
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    {"check": check, "run": train, "print": print_commands}[args.command](stage)


if __name__ == "__main__":
    main()
