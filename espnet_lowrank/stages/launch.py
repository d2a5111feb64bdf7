"""How stage 11 starts ESPnet's trainer: one process (ESPnet's own DDP for ``--ngpu`` > 1), or
``--num_procs`` processes per node through torchrun, each with one GPU (NCCL) or on CPU (gloo),
on one node or ``--num_nodes``; and the same as command lines to copy onto other nodes."""

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence

from espnet_lowrank.stages import StageError

TRAINER = "espnet_lowrank.bin.asr_train"
#: stands for the node's rank in a printed command: torchrun's line takes it from the environment
NODE_RANK = "${NODE_RANK}"


@dataclass
class Launch:
    ngpu: int = 0
    num_procs: int = 1
    num_nodes: int = 1
    node_rank: int = 0
    master_addr: str = "localhost"
    master_port: int = 29500
    dist_backend: str = ""  # default: nccl with GPUs, gloo on CPU
    python: str = field(default_factory=lambda: sys.executable)

    def __post_init__(self):
        if not self.dist_backend:
            self.dist_backend = "nccl" if self.ngpu > 0 else "gloo"

    @property
    def world_size(self) -> int:
        return self.num_procs * self.num_nodes

    @property
    def processes_here(self) -> int:
        """The training processes on this node (ESPnet starts one per GPU itself for ``--ngpu`` > 1)."""
        if self.world_size > 1:
            return self.num_procs
        return max(1, self.ngpu)

    def check(self) -> None:
        """Refuse, one line each, what cannot start."""
        if self.node_rank >= self.num_nodes:
            raise StageError(f"--node_rank {self.node_rank} must be below --num_nodes {self.num_nodes}")
        if self.num_procs > 1 and self.ngpu > 0 and self.ngpu != self.num_procs:
            raise StageError(f"--ngpu {self.ngpu} with --num_procs {self.num_procs}: each training process takes "
                             f"one GPU, so give --ngpu {self.num_procs}")
        if self.dist_backend not in ("gloo", "nccl"):
            raise StageError(f"--dist_backend '{self.dist_backend}' is unknown; choose one of: gloo nccl")
        if self.dist_backend == "nccl" and self.ngpu == 0:
            raise StageError("--dist_backend nccl needs GPUs (--ngpu > 0); CPU processes use gloo")

    def process_options(self) -> List[str]:
        """The asr_train options each process gets."""
        if self.world_size > 1:
            return ["--ngpu", "1" if self.ngpu > 0 else "0", "--dist_backend", self.dist_backend,
                    "--multiprocessing_distributed", "false"]
        return ["--ngpu", str(self.ngpu), "--multiprocessing_distributed", "true" if self.ngpu > 1 else "false"]

    def command(self, asr_train_options: Sequence[str], node_rank: str = "") -> List[str]:
        """The command that starts the trainer on this node (or on node ``node_rank``)."""
        if self.world_size == 1:
            return [self.python, "-m", TRAINER, *asr_train_options, *self.process_options()]
        return [self.python, "-m", "torch.distributed.run", "--nnodes", str(self.num_nodes),
                "--node_rank", node_rank or str(self.node_rank), "--nproc_per_node", str(self.num_procs),
                "--master_addr", self.master_addr, "--master_port", str(self.master_port),
                "-m", TRAINER, *asr_train_options, *self.process_options()]


#: the master's address in a Slurm allocation: its first node
SLURM_MASTER = '$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
SLURM_NODE_RANK = "$SLURM_NODEID"


def shell_words(words: Sequence[str], expanded: Sequence[str] = (NODE_RANK,)) -> str:
    """``words`` as one shell command line: each quoted as it is, but those in ``expanded``
    double-quoted, so that the shell running the line fills them in."""
    return " ".join(f'"{word}"' if word in expanded else shlex.quote(word) for word in words)


def _for_slurm(words: Sequence[str]) -> List[str]:
    """A command's words as a Slurm task runs them: the node's rank and the master's address from Slurm."""
    out = [SLURM_NODE_RANK if word == NODE_RANK else word for word in words]
    for index, word in enumerate(out[:-1]):
        if word == "--master_addr":
            out[index + 1] = SLURM_MASTER
    return out


def node_lines(launch: Launch, workdir: Path, steps: Sequence[Sequence[str]]) -> List[str]:
    """The ``steps`` (each a command's words; ``NODE_RANK`` for the node's rank) as lines to copy:
    one line to run on each node, then one ``srun`` line for a Slurm allocation of the nodes, one
    task per node, whose first node is the master."""
    cd = f"cd {shlex.quote(str(workdir))}"
    on_node = " && ".join([cd, *(shell_words(step) for step in steps)])
    in_slurm = " && ".join(shell_words(_for_slurm(step), (SLURM_NODE_RANK, SLURM_MASTER))
                           for step in steps)
    nodes = launch.num_nodes
    return [
        f"# on each of the {nodes} node(s), with NODE_RANK set to its rank (0 on the master):",
        on_node,
        f"# or, from a Slurm allocation of {nodes} node(s):",
        f"srun --nodes {nodes} --ntasks-per-node 1 --chdir {shlex.quote(str(workdir))} bash -c {shlex.quote(in_slurm)}",
    ]
