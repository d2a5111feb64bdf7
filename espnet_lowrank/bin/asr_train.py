"""``python -m espnet_lowrank.bin.asr_train``: ESPnet's ``asr_train`` with the
low-rank classes registered, crash-safe checkpoints
(:mod:`espnet_lowrank.checkpoints`), under torchrun a check that every rank
ends with the same weights, a stop for a diverged training
(``--stop_after_nonfinite_steps``, :mod:`espnet_lowrank.divergence`), and two
training options of ours besides ESPnet's: ``--compile``
(:mod:`espnet_lowrank.compiling`) and ``--lowrank_recompute``
(:mod:`espnet_lowrank.recompute`)."""

import hashlib
import os
import sys
from pathlib import Path
from typing import Sequence

import torch

import espnet_lowrank  # noqa: F401  (registers the low-rank classes)
from espnet2.bin.asr_train import main
from espnet2.tasks.asr import ASRTask

from espnet_lowrank import divergence
from espnet_lowrank.checkpoints import install_atomic_save, recover_checkpoint
from espnet_lowrank.compiling import compile_blocks, graphs_compiled
from espnet_lowrank.errors import one_line_errors
from espnet_lowrank.recompute import set_recompute
from espnet_lowrank.stages.train_options import command_line_value



def _building_for_training(build_model):
    """``ASRTask.build_model`` that applies our training options to the model
    it builds (here only: decoding builds models through ESPnet's own)."""

    def build_for_training(cls, args):
        model = build_model(cls, args)
        if getattr(args, "lowrank_recompute", False):
            print(f"asr_train: {set_recompute(model, True)} factorised layers recompute V·x in the backward pass",
                  file=sys.stderr, flush=True)
        if getattr(args, "compile", False) and not getattr(args, "collect_stats", False):
            compile_blocks(model)
            _building_for_training.compiling = True
        if getattr(args, "stop_after_nonfinite_steps", 0) > 0 and not getattr(args, "collect_stats", False):
            divergence.install(model, Path(args.output_dir), args.stop_after_nonfinite_steps)
        return model

    return classmethod(build_for_training)


# at import, so the processes ESPnet spawns for DDP save atomically and build as we do too
install_atomic_save()
ASRTask.build_model = _building_for_training(ASRTask.build_model.__func__)


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
    try:
        main()
    except divergence.TrainingDiverged as error:  # one line, naming the last good checkpoint
        sys.exit(f"ERROR: {error}")
    if getattr(_building_for_training, "compiling", False):
        print(f"asr_train: torch.compile built {graphs_compiled()} graphs in this process", file=sys.stderr)
    check_ranks_agree()
    if torch.distributed.is_initialized():
        # ESPnet leaves the process group to the interpreter's exit, where gloo's threads were seen to abort
        # a rank (SIGABRT, "terminate called without an active exception") after training had finished
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
