"""Soak run.sh under kills: run it end to end, kill it at random moments (SIGKILL, SIGTERM or Ctrl-C's
SIGINT, to its whole process group as a scheduler or a terminal does), resume with the same command after
each kill, then check that nothing was lost, done twice or left behind:
``python dev/soak.py --recipe_dir DIR --kills N --seeds S... -- RUN_SH_OPTIONS``.

Each kill aims at a stage (every stage the run passes gets one; the kills beyond those go to training)
and lands a random time after that stage's log line, so the moments fall in data preparation, training,
decoding and packing alike; the seed, printed first, replays them. The checks at the end: no training
epoch that had finished before a kill was started again; each data and dump dir holds each utterance
once; each phase trained its configured epochs; the decoded text, RESULTS.md and the pack come after the
final model, each utterance once; no lock is held or left and no partial file remains.
"""

import argparse
import fcntl
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from espnet_lowrank.tools.command import command_main
from espnet_lowrank.kaldi_table import read_table
from espnet_lowrank.errors import InputError
from espnet_lowrank.studies.recipe import Recipe

SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}
#: run.sh's stages, in order; each logs "run.sh: stage N:" when it starts, or "stage N: already done"
STAGES = (1, 2, 3, 4, 5, 10, 11, 12, 13, 14)
TRAINING = 11
TRAINING_SPAN = 8
STAGE_LINE = re.compile(r"(?:run\.sh: |^(?=stage \d+: already done))stage (\d+):")
EPOCH_STARTED = re.compile(r"(\d+)/\d+epoch started")
#: what a run that died leaves when something is not written atomically or not cleaned up
LEFTOVER = re.compile(r"(\.partial(\.zip)?|\.tmp|\.damaged|^\.lock\..*)$")
#: a kill that came too late is tried again with half the delay, down to this many seconds: a finished
#: run redoes only scoring and packing (1-2 s), which a kill this soon after a stage's line still hits
SOONEST = 0.05
#: a process that ignores SIGTERM or SIGINT longer than this is a failure
STOP_SECONDS = 60


@dataclass
class Kill:
    signal_name: str
    stage: int  # the stage it aimed at
    delay: float  # seconds after that stage's line
    landed: Optional[int] = None  # the stage whose line came last before the signal


@dataclass
class Attempt:
    """One run.sh call: where each training log stood before it, and the epochs finished after it."""

    log_offsets: Dict[Path, int]
    finished_after: Dict[Path, int] = field(default_factory=dict)


def plan_kills(rng: random.Random, kills: int, stages, signals, max_delay: float) -> List[Kill]:
    """``kills`` kills in stage order, each with a random signal and delay: one per stage, and the kills
    beyond those to training, where a run spends its hours (their delays range over ``TRAINING_SPAN``
    times ``max_delay``, to reach into its epochs and phases)."""
    targets = list(stages[:kills]) + [TRAINING] * max(0, kills - len(stages))
    return [Kill(rng.choice(signals), stage,
                 round(rng.uniform(0, max_delay * (TRAINING_SPAN if stage == TRAINING else 1)), 2))
            for stage in sorted(targets, key=stages.index)]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Run:
    """run.sh in its own process group, its stderr followed line by line."""

    def __init__(self, recipe: Recipe, options: List[str], log):
        environment = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        # as from a terminal: a soak started in the background (`&`, as CI may start it) would otherwise
        # hand run.sh an ignored SIGINT, which bash cannot undo and Python then never raises
        self.process = subprocess.Popen(["./run.sh", "--python", sys.executable, *options], cwd=recipe.path,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True, env=environment, preexec_fn=_default_sigint)
        self.stage: Optional[int] = None
        self.stage_seen = threading.Event()
        self.tail: List[str] = []
        self._log = log
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self._log.write(line)
            self.tail = (self.tail + [line])[-40:]
            match = STAGE_LINE.search(line)
            if match:
                self.stage = int(match.group(1))
                self.stage_seen.set()

    def wait_for_stage(self, stage: int, stages) -> bool:
        """Until a stage at or after ``stage`` has started; False when run.sh ended first."""
        while self.process.poll() is None:
            if self.stage is not None and stages.index(self.stage) >= stages.index(stage):
                return True
            self.stage_seen.wait(0.05)
            self.stage_seen.clear()
        return False

    def stop(self, signal_name: str) -> None:
        """Send the signal to every process of the run, then wait until none is left."""
        group = self.process.pid
        try:
            os.killpg(group, SIGNALS[signal_name])
        except ProcessLookupError:
            pass
        deadline = time.time() + STOP_SECONDS
        while time.time() < deadline:
            self.process.poll()
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.killpg(group, signal.SIGKILL)
            raise InputError(f"soak: run.sh's processes were still running {STOP_SECONDS} s after "
                             f"SIG{signal_name} (then killed)")
        self.finish()

    def finish(self) -> int:
        self.process.wait()
        self._reader.join()
        return self.process.returncode


def training_dirs(recipe: Recipe) -> List[Path]:
    """Every training output dir (a dense warm-up's and the run's own) under the recipe's exp/."""
    return sorted(path.parent for path in (recipe.path / "exp").glob("**/train.log"))


def finished_epochs(out: Path) -> int:
    """The epochs ESPnet's checkpoint in ``out`` records as finished (0 without one)."""
    import torch

    checkpoint = out / "checkpoint.pth"
    if not checkpoint.exists():
        return 0
    # this run's own checkpoint; its reporter state is not plain tensors
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["reporter"]["epoch"]


class Soak:
    def __init__(self, recipe: Recipe, options: List[str], log_path: Path):
        self.recipe, self.options = recipe, options
        self.log = log_path.open("a", buffering=1)
        self.attempts: List[Attempt] = []

    def say(self, message: str) -> None:
        line = f"soak: {message}"
        print(line, file=sys.stderr, flush=True)
        self.log.write(line + "\n")

    def start(self) -> Run:
        offsets = {out: (out / "train.log").stat().st_size for out in training_dirs(self.recipe)}
        self.attempts.append(Attempt(offsets))
        return Run(self.recipe, self.options, self.log)

    def ended(self, run: Run) -> None:
        self.attempts[-1].finished_after = {out: finished_epochs(out) for out in training_dirs(self.recipe)}

    def failed(self, run: Run, what: str) -> InputError:
        return InputError(f"soak: {what}; run.sh's last lines:\n{''.join(run.tail[-15:])}")

    def kill(self, kill: Kill, stages) -> bool:
        """One run, stopped by ``kill``; False when it finished before the kill could land."""
        run = self.start()
        if run.wait_for_stage(kill.stage, stages):
            time.sleep(kill.delay)
        if run.process.poll() is not None:
            code = run.finish()
            self.ended(run)
            if code:
                raise self.failed(run, f"run.sh failed (exit {code}) on its way to the kill at stage {kill.stage}")
            return False
        kill.landed = run.stage
        run.stop(kill.signal_name)
        self.ended(run)
        return True

    def to_the_end(self) -> None:
        run = self.start()
        code = run.finish()
        self.ended(run)
        if code:
            raise self.failed(run, f"the resumed run failed (exit {code})")


def epochs_trained_twice(attempts: List[Attempt]) -> List[str]:
    """Epochs started again in a run after an earlier run had finished them, per training dir."""
    twice = []
    for before, attempt in zip(attempts, attempts[1:]):
        for out, offset in attempt.log_offsets.items():
            finished = before.finished_after.get(out, 0)
            with (out / "train.log").open(errors="replace") as log:
                log.seek(offset)
                started = [int(epoch) for epoch in EPOCH_STARTED.findall(log.read())]
            twice += [f"{out}: epoch {epoch} (finished before)" for epoch in started if epoch <= finished]
    return twice


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else float("-inf")


def training_problems(recipe: Recipe, tag_dir: Path) -> List[str]:
    """Each training phase ended at its configured epoch; the averaged model came after the last one."""
    problems = []
    for out in training_dirs(recipe):
        configured = yaml.safe_load((out / "config.yaml").read_text())["max_epoch"]
        if finished_epochs(out) != configured:
            problems.append(f"{out} finished {finished_epochs(out)} of its {configured} epochs")
    model = tag_dir / "valid.acc.ave.pth"
    if not model.exists() or _mtime(model) < _mtime(tag_dir / "checkpoint.pth"):
        problems.append(f"{model} is missing or older than the last epoch's checkpoint")
    return problems


#: the per-utterance files of a data or dump dir, each holding every utterance of its wav.scp once
PER_UTTERANCE = ("wav.scp", "text", "utt2spk", "utt2num_samples")


def data_problems(recipe: Recipe) -> List[str]:
    """Every data and dump dir holds each of its utterances once in each per-utterance file, and a dumped
    test set holds every utterance of its data dir."""
    problems = []
    for wav_scp in sorted([*recipe.path.glob("data/*/wav.scp"), *recipe.path.glob("dump/raw/**/wav.scp")]):
        keys = None
        for name in PER_UTTERANCE:
            try:
                table = set(read_table(wav_scp.parent / name)) if (wav_scp.parent / name).exists() else None
            except ValueError as error:  # a key twice
                problems.append(str(error))
                continue
            keys = table if keys is None else keys
            if table is not None and table != keys:
                problems.append(f"{wav_scp.parent / name} does not hold the utterances of {wav_scp}")
    for dumped in sorted(recipe.path.glob("dump/raw/org/*/wav.scp")):
        source = recipe.path / "data" / dumped.parent.name / "wav.scp"
        if source.exists() and set(read_table(source)) != set(read_table(dumped)):
            problems.append(f"{dumped} does not hold the utterances of {source}")
    return problems


def result_problems(recipe: Recipe, tag_dir: Path) -> List[str]:
    """Each decoded text holds every test utterance once and came after the model; RESULTS.md came after
    the texts; the pack holds the model."""
    model, texts = tag_dir / "valid.acc.ave.pth", sorted(tag_dir.glob("decode_*/*/text"))
    problems = [] if texts else [f"nothing decoded in {tag_dir}"]
    for text in texts:
        wav = recipe.path / "dump" / "raw" / text.parent.name / "wav.scp"
        keys = [line.split(maxsplit=1)[0] for line in text.read_text().splitlines()]
        if sorted(keys) != sorted(read_table(wav)):
            problems.append(f"{text} does not hold each utterance of {wav} once")
        if _mtime(text) < _mtime(model):
            problems.append(f"{text} was decoded before {model} was written")
    results = tag_dir / "RESULTS.md"
    if any(_mtime(results) < _mtime(text) for text in texts) or not results.exists():
        problems.append(f"{results} is missing or older than a decoded text")
    pack = tag_dir / "asr_model.zip"
    try:
        with zipfile.ZipFile(pack) as archive:
            packed = yaml.safe_load(archive.read("meta.yaml"))["files"]["asr_model_file"]
            if archive.testzip() is not None or archive.read(packed) != model.read_bytes():
                problems.append(f"{pack} is damaged or does not hold {model}")
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        problems.append(f"{pack}: {error}")
    return problems


def leftovers(recipe: Recipe) -> List[str]:
    """Partial files, lock files and held locks anywhere in the recipe dir."""
    problems = []
    for folder, _, files in os.walk(recipe.path):  # not into the links to conf/ and local/
        for name in files:
            if LEFTOVER.search(name) or (name == ".lock" and Path(folder) != recipe.path / "data"):
                problems.append(f"left behind: {Path(folder) / name}")
    data_lock = recipe.path / "data" / ".lock"  # flock's file stays; the lock must not
    if data_lock.exists():
        with data_lock.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                problems.append(f"{data_lock} is still held")
    return problems


def tag_dir_of(recipe: Recipe, options: List[str]) -> Path:
    """exp/asr_<tag> of the run the options describe (run.sh's default tag: the config's name)."""
    def option(name: str, default: str) -> str:
        values = [options[i + 1] for i, word in enumerate(options[:-1]) if word == f"--{name}"]
        return values[-1] if values else default

    tag = option("asr_tag", "") or Path(option("asr_config", "conf/train_asr_lrsms_demo.yaml")).stem
    return recipe.path / option("expdir", "exp") / f"asr_{tag}"


def land(session: Soak, kill: Kill, stages, number: int) -> None:
    """Runs until ``kill`` lands, each try sooner after its stage's line: a kill aimed at training can come
    after a resumed training has finished (finished stages are checked and skipped, scoring and packing
    are redone, so a kill soon enough still lands in them)."""
    while not session.kill(kill, stages):
        if kill.delay <= SOONEST:
            raise InputError(f"soak: kill {number} did not land even {kill.delay} s after stage {kill.stage}'s "
                             "line: run.sh finished first")
        session.say(f"run.sh finished before kill {number} ({kill.delay} s into stage {kill.stage}); "
                    "again, sooner")
        kill.delay = max(SOONEST, round(kill.delay / 2, 2))


def soak(recipe: Recipe, options: List[str], kills: int, seed: int, signals: List[str],
         max_delay: float, log_path: Path) -> Dict[str, object]:
    rng = random.Random(seed)
    stages = [s for s in STAGES if s != 2 or "--speed_perturb_factors" in options]
    plan = plan_kills(rng, kills, stages, signals, max_delay)
    session = Soak(recipe, options, log_path)
    session.say(f"seed {seed}: {kills} kills ({', '.join(signals)}) at stages "
                f"{' '.join(str(k.stage) for k in plan)}, up to {max_delay} s after each stage's start")
    landed = []
    for number, kill in enumerate(plan, 1):
        land(session, kill, stages, number)
        landed.append(kill)
        session.say(f"kill {number}/{kills}: SIG{kill.signal_name} in stage {kill.landed} "
                    f"(aimed at {kill.stage}, {kill.delay} s after its start); resuming")
    session.to_the_end()
    tag_dir = tag_dir_of(recipe, options)
    problems = (epochs_trained_twice(session.attempts) + data_problems(recipe) + training_problems(recipe, tag_dir)
                + result_problems(recipe, tag_dir) + leftovers(recipe))
    summary = {"seed": seed, "kills": len(landed), "planned": kills, "problems": problems,
               "landed": [(k.signal_name, k.landed) for k in landed]}
    session.say(f"seed {seed}: {len(landed)} kills survived, {len(problems)} problems"
                + "".join(f"\n  {p}" for p in problems))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe_dir", type=Path, required=True,
                        help="a recipe dir (run.sh, conf/, local/); the soak's runs use its data/, dump/ and exp/")
    parser.add_argument("--kills", type=int, default=12,
                        help="kills per seed: one per stage, the rest in training")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="one soak per seed, each in its own scratch recipe dir under --out_dir")
    parser.add_argument("--signals", nargs="+", choices=sorted(SIGNALS), default=["KILL", "TERM", "INT"])
    parser.add_argument("--max_delay", type=float, default=4.0,
                        help="a kill lands up to this many seconds after its stage starts")
    parser.add_argument("--out_dir", type=Path, default=Path("soak"),
                        help="scratch recipe dirs (soak/seed<S>) and their logs")
    parser.set_defaults(run_args=[])


#: run.sh options that name a file: given relative to where soak runs, they are made absolute, as the
#: runs happen in scratch recipe dirs
PATH_OPTIONS = ("--asr_config", "--inference_config", "--init_param")


def absolute_paths(options: List[str]) -> List[str]:
    return [str(Path(word).resolve()) if index and options[index - 1] in PATH_OPTIONS and Path(word).is_file()
            else word for index, word in enumerate(options)]


def run(args: argparse.Namespace) -> None:
    if args.kills < 0:
        raise InputError(f"--kills must be >= 0, not {args.kills}")
    recipe = Recipe(args.recipe_dir)
    args.run_args = absolute_paths(args.run_args)
    results = []
    for seed in args.seeds:
        scratch = args.out_dir.resolve() / f"seed{seed}"
        if scratch.exists():
            raise InputError(f"{scratch} exists: a soak starts from nothing; move it away or use another --out_dir")
        results.append(soak(recipe.scratch(scratch), args.run_args, args.kills, seed, args.signals,
                            args.max_delay, scratch / "soak.log"))
    survived = sum(result["kills"] for result in results)
    problems = sum(len(result["problems"]) for result in results)
    print(f"soak: {survived} kills survived over {len(results)} seed(s) ({', '.join(map(str, args.seeds))}); "
          f"{problems} problems")
    if problems:
        raise InputError(f"soak: {problems} problems (listed above)")


main = command_main(__doc__, add_arguments, run)

if __name__ == "__main__":
    main()
