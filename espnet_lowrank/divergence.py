"""Stop a training whose loss stays non-finite, naming where and the last good checkpoint.

ESPnet skips a step whose gradient norm is not finite ("The grad norm is nan. Skipping updating the
model.") and goes on. One such step is harmless; but once the weights themselves have blown up, every
later step is one, each epoch's loss reads ``nan``, and ESPnet ends the run *successfully* after an
epoch in which no step was valid — the pipeline would then decode and score a model that never trained.
:class:`DivergenceGuard` watches the loss of every training step and ends the run after ``limit``
non-finite ones in a row, or at the end of an epoch none of whose steps had a finite loss, however
short (a run of 4 epochs × 3 steps never reaches 20 in a row).
"""

import re
from pathlib import Path
from typing import Optional

import torch

from espnet_lowrank.errors import InputError
from espnet_lowrank.model_files import load_weights

#: Non-finite losses in a row that end a training. A bad batch or two make one or two such steps (fp16 AMP's
#: loss scaler skips steps whose *gradients* overflow, with a finite loss: those do not count), while weights
#: that have blown up make every later step one; 20 is far fewer than an epoch of LibriSpeech-100 (~700
#: steps at the recipe's batch), so a run that cannot recover stops within an epoch.
DEFAULT_LIMIT = 20


class TrainingDiverged(InputError):
    """The loss stayed non-finite: an expected failure, told in one line (no traceback)."""


def last_good_checkpoint(output_dir: Path) -> Optional[Path]:
    """The newest ``<N>epoch.pth`` in ``output_dir`` whose weights are all finite."""
    numbered = sorted((int(match.group(1)), path) for path in Path(output_dir).glob("*epoch.pth")
                      if (match := re.fullmatch(r"(\d+)epoch\.pth", path.name)))
    for _, path in reversed(numbered):
        state = load_weights(path)
        if all(torch.isfinite(value).all() for value in state.values()
               if torch.is_tensor(value) and value.is_floating_point()):
            return path
    return None


class DivergenceGuard:
    """A forward hook on the ESPnet model: counts training steps per epoch and non-finite losses in a row."""

    def __init__(self, output_dir: Path, limit: int = DEFAULT_LIMIT):
        if limit < 1:
            raise InputError(f"--stop_after_nonfinite_steps {limit}: give 1 or more (0 turns the guard off)")
        self.output_dir = Path(output_dir)
        self.limit = limit
        self.epoch: Optional[int] = None
        self.step = 0  # training steps of this epoch
        self.finite = 0  # of which with a finite loss
        self.in_a_row = 0

    def start_epoch(self, epoch: int) -> None:
        self.check_epoch_end()  # an epoch without validation ends here
        self.epoch, self.step, self.finite = epoch, 0, 0

    def check_epoch_end(self) -> None:
        """The epoch's training is over: refuse it if it trained and not one step had a finite loss."""
        if self.step and not self.finite:
            raise TrainingDiverged(self.message(f"no training step of {self.where()} had a finite loss"))

    def __call__(self, module: torch.nn.Module, inputs, output) -> None:
        if not module.training:  # validation comes after the epoch's steps; its losses are its own business
            self.check_epoch_end()
            return
        self.step += 1
        loss = output[0] if isinstance(output, (tuple, list)) else output
        if bool(torch.isfinite(loss.detach()).all()):
            self.finite += 1
            self.in_a_row = 0
            return
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise TrainingDiverged(self.message(f"the loss was not finite for {self.in_a_row} steps in a row, "
                                                f"up to {self.where()}, step {self.step}"))

    def where(self) -> str:
        return f"epoch {self.epoch}" if self.epoch is not None else "this run"

    def message(self, what: str) -> str:
        good = last_good_checkpoint(self.output_dir)
        last = (f"the last checkpoint with finite weights is {good}" if good is not None
                else "no finished epoch has finite weights yet")
        return (f"training diverged: {what}; {last}. Lower the learning rate (optim_conf.lr) or raise its "
                f"warm-up, and train again (another --asr_tag, or --init_param from that checkpoint)")


def install(model: torch.nn.Module, output_dir: Path, limit: int = DEFAULT_LIMIT) -> DivergenceGuard:
    """Guard ``model``'s training steps; the epoch comes from ESPnet's reporter, as its trainer sets it."""
    from espnet2.train.reporter import Reporter

    guard = DivergenceGuard(output_dir, limit)
    model.register_forward_hook(guard)
    set_epoch = Reporter.set_epoch

    def set_epoch_and_tell(reporter, epoch: int) -> None:
        set_epoch(reporter, epoch)
        guard.start_epoch(epoch)

    Reporter.set_epoch = set_epoch_and_tell
    return guard
