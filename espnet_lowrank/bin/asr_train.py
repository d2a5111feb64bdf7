"""``python -m espnet_lowrank.bin.asr_train``: ESPnet's ``asr_train``, with
what registration gives a training of our classes (our training options,
crash-safe checkpoints, a one-line stop for a diverged training:
:mod:`espnet_lowrank.training_extras`) given to every training it runs, dense
ones too (the recipe's dense warm-up), and what only a run.sh training needs:
checkpoints recovered once before ESPnet starts (before any process of a
multi-process training), under torchrun a check that every rank ends with the
same weights, and the threads and compiled graphs in the log."""

import hashlib
import os
import sys
from pathlib import Path
from typing import Sequence

import torch
from espnet2.bin.asr_train import main

from espnet_lowrank import registration, training_extras
from espnet_lowrank.checkpoints import recover_checkpoint
from espnet_lowrank.command_line import command_line_value
from espnet_lowrank.compiling import graphs_compiled
from espnet_lowrank.errors import one_line_errors

# at import, so the processes ESPnet spawns for DDP build as we do too; a registration that failed quietly
# when ESPnet loaded fails here, loudly
registration.for_every_model()
registration.register()


@one_line_errors
def prepare_resume(argv: Sequence[str]) -> None:
    resuming = (command_line_value(argv, "resume") or "").lower() == "true"
    collecting = (command_line_value(argv, "collect_stats") or "").lower() == "true"
    output_dir = command_line_value(argv, "output_dir")
    one_of_many = int(os.environ.get("WORLD_SIZE", "1")) > 1  # the launcher recovered it once for all ranks
    if resuming and not collecting and output_dir and not one_of_many:
        recover_checkpoint(Path(output_dir))


class _RecordedDDP(torch.nn.parallel.DistributedDataParallel):
    """ESPnet's trainer wraps the model in DDP; remember it for :func:`check_ranks_agree`."""

    wrapped = []

    def __init__(self, module, *args, **kwargs):
        super().__init__(module, *args, **kwargs)
        _RecordedDDP.wrapped.append(module)


def check_ranks_agree() -> None:
    """After a multi-process training every rank must hold the same weights:
    each rank hashes its parameters, rank 0 compares the hashes and logs the
    result (a mismatch fails the run)."""
    if not (_RecordedDDP.wrapped and torch.distributed.is_initialized()):
        return
    digest = hashlib.sha1()
    for name, tensor in sorted(_RecordedDDP.wrapped[-1].state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    digests = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(digests, digest.hexdigest())
    if torch.distributed.get_rank() == 0:
        if len(set(digests)) != 1:
            raise RuntimeError(f"the training ranks hold different weights after training: {digests}")
        print(f"espnet-lowrank: all {len(digests)} ranks hold identical weights (sha1 {digests[0]})",
              file=sys.stderr)


if __name__ == "__main__":
    # runs side by side divide the cores among them (espnet_lowrank.threads): train.log says what this one got
    print(f"asr_train: {torch.get_num_threads()} torch thread(s)", file=sys.stderr, flush=True)
    prepare_resume(sys.argv[1:])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.nn.parallel.DistributedDataParallel = _RecordedDDP
    main()
    if training_extras.compiling:
        print(f"asr_train: torch.compile built {graphs_compiled()} graphs in this process", file=sys.stderr)
    check_ranks_agree()
    if torch.distributed.is_initialized():
        # ESPnet leaves the process group to the interpreter's exit, where gloo's threads were seen to abort
        # a rank (SIGABRT, "terminate called without an active exception") after training had finished
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
