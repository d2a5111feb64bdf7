"""Several training processes: the same update as one process with the whole
batch (gloo on CPU), the launch commands run.sh prints, and its refusals."""

import os
import shlex
import subprocess
import sys

import pytest
import torch

from espnet_lowrank import cpu_step
from tests.test_run_sh import ROOT, TINY_CONFIG, recipe_dir, run

TINY_DENSE = ROOT / "tests" / "conf" / "tiny_dense.yaml"

UTTERANCES, SAMPLES, TOKENS = 4, 8000, 5


def tiny_batch(utterances):
    """Equal-length utterances (no padding, so splitting cannot change a loss)."""
    generator = torch.Generator().manual_seed(1)
    speech = torch.randn(UTTERANCES, SAMPLES, generator=generator)
    text = torch.randint(1, 8, (UTTERANCES, TOKENS), generator=generator)
    index = torch.tensor(utterances)
    return {"speech": speech[index], "speech_lengths": torch.full((len(utterances),), SAMPLES),
            "text": text[index], "text_lengths": torch.full((len(utterances),), TOKENS)}


def one_sgd_step(rank: int, world_size: int, out: str) -> None:
    """Build the tiny model as ESPnet does, take one SGD step on this rank's
    share of the batch (ESPnet's split: every world_size-th utterance), save the weights."""
    from espnet_lowrank.model_config import build_model

    if world_size > 1:
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    # eval mode: no dropout, and BatchNorm uses its running statistics; in training
    # it normalises by each process's own half batch (ESPnet has no SyncBatchNorm)
    model = build_model(TINY_CONFIG, vocab_size=10).eval()
    trained = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = trained(**tiny_batch(list(range(rank, UTTERANCES, world_size))))[0]
    loss.backward()
    optimizer.step()
    torch.save({name: value.detach().clone() for name, value in model.state_dict().items()}, f"{out}.{rank}")
    if world_size > 1:
        torch.distributed.destroy_process_group()


def test_two_processes_with_half_batches_make_the_update_of_one_with_the_whole(tmp_path):
    import torch.multiprocessing

    from espnet_lowrank.model_config import build_model

    torch.manual_seed(0)
    start = build_model(TINY_CONFIG, vocab_size=10).state_dict()
    one_sgd_step(0, 1, str(tmp_path / "single"))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
    torch.multiprocessing.spawn(one_sgd_step, args=(2, str(tmp_path / "ddp")), nprocs=2)
    single = torch.load(tmp_path / "single.0")
    ranks = [torch.load(tmp_path / f"ddp.{rank}") for rank in (0, 1)]
    whole_steps, split_steps = [], []
    for name, before in start.items():
        if not before.is_floating_point():
            continue
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0)  # the ranks agree exactly
        whole_steps.append((single[name] - before).double().flatten())
        split_steps.append((ranks[0][name] - before).double().flatten())
        # per tensor: equal but for the float32 rounding of the weights themselves
        torch.testing.assert_close(split_steps[-1], whole_steps[-1], rtol=1e-5, atol=1e-7, msg=name)
    whole, split = torch.cat(whole_steps), torch.cat(split_steps)
    assert (whole != 0).sum() > 0.9 * whole.numel()  # (nearly) every weight took a step
    assert (split - whole).norm() <= 1e-5 * whole.norm()  # the target: 1e-5 relative


def launch_lines(recipe, *options):
    result = run(recipe, "--asr_config", str(TINY_CONFIG), "--print_launch_cmd", "true", *options)
    return [line for line in result.stdout.splitlines() if not line.startswith("#")]


def check_torchrun(words, node_rank: str) -> None:
    """``words`` (one ``&&`` segment) is a torchrun of our trainer that both
    torchrun's and ESPnet's parsers accept."""
    from torch.distributed.run import get_args_parser

    from espnet_lowrank.model_config import asr_task

    start = words.index("torch.distributed.run") + 1
    launch = get_args_parser().parse_args([node_rank if w in ("${NODE_RANK}", "$SLURM_NODEID") else w
                                           for w in words[start:]])
    assert (launch.nnodes, launch.nproc_per_node, launch.node_rank) == ("2", "3", int(node_rank))
    assert launch.module and launch.training_script == "espnet_lowrank.bin.asr_train"
    train = asr_task().get_parser().parse_args(launch.training_script_args)
    assert (train.ngpu, train.dist_backend, train.multiprocessing_distributed) == (0, "gloo", False)
    assert train.output_dir == "exp/asr_tiny_lowrank" and train.max_epoch == 3


def test_the_printed_multi_node_commands_parse(tmp_path):
    plain, slurm = launch_lines(recipe_dir(tmp_path), "--num_nodes", "2", "--num_procs", "3",
                                "--master_addr", "node1", "--asr_args", "--max_epoch 3")
    segments = " ".join(shlex.split(plain)).split(" && ")
    assert segments[0] == f"cd {tmp_path}"
    assert segments[1].endswith("-m espnet_lowrank.checkpoints exp/asr_tiny_lowrank")  # recovery, once per node
    check_torchrun(shlex.split(plain)[shlex.split(plain).index("torch.distributed.run") - 2:], "1")
    srun = shlex.split(slurm)
    assert srun[:5] == ["srun", "--nodes", "2", "--ntasks-per-node", "1"] and srun[-3] == "bash"
    inner = shlex.split(srun[-1])
    master = inner.index("--master_addr") + 1
    assert inner[master].startswith("$(scontrol show hostnames")  # the allocation's first node
    inner[master] = "node1"
    check_torchrun(inner, "0")
    assert subprocess.run(["bash", "-n", "-c", srun[-1]]).returncode == 0  # valid shell


@pytest.mark.parametrize("options, message", [
    (("--num_procs", "2", "--asr_args", "--batch_type unsorted --batch_size 3"),
     "batch_size 3 (batch_type unsorted) does not split evenly across 2 training processes"),
    (("--num_procs", "2", "--dist_backend", "nccl"), "--dist_backend nccl needs GPUs (--ngpu > 0)"),
    (("--num_procs", "2", "--ngpu", "3"), "each training process takes one GPU, so give --ngpu 2"),
    (("--num_nodes", "2", "--node_rank", "2"), "--node_rank 2 must be below --num_nodes 2"),
])
def test_what_several_processes_cannot_do_is_refused_before_anything_starts(tmp_path, options, message):
    result = run(recipe_dir(tmp_path), "--asr_config", str(TINY_CONFIG), *options, check=False)
    assert result.returncode != 0 and message in result.stderr
    assert not (tmp_path / "data").exists()


def test_the_gpu_check_runs_its_cpu_part_and_says_cuda_is_absent(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("on a CUDA machine the check runs in full (minutes): run local/gpu_check.sh")
    out = tmp_path / "gpu_check.md"
    result = subprocess.run([str(ROOT / "local" / "gpu_check.sh"), str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    report = out.read_text()
    assert report.startswith("# GPU check: ") and "(CUDA absent)" in report
    rows = [line for line in report.splitlines() if line.startswith("| ") and "check |" not in line]
    assert len(rows) == 3 and all(row.endswith("| pass |") for row in rows), rows
    assert "CUDA is absent on this machine" in report


@pytest.mark.slow
def test_the_gpu_checks_bench_runs_compiled_and_memory_lean_rows_on_the_cpu(tmp_path):
    """The GPU check's part 2 (--quick: a toy batch; tiny configs), as it runs on the GPU."""
    out = tmp_path / "gpu_check.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "dev" / "gpu_check.py"), "--recipe_dir", str(ROOT / "egs2/embedded/asr1"),
         "--out", str(out), "--quick", "--configs", str(TINY_DENSE), str(TINY_CONFIG)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = out.read_text()
    assert "### bench at the recipe's batch, amp bf16" in report
    assert "batch_bins 120000 (ESPnet's numel sampler)" in report
    step = cpu_step.chosen(cpu_step.DEFAULT, "cuda" if torch.cuda.is_available() else "cpu")  # as a training's
    for row in ("tiny_dense.yaml [eager, bf16", "tiny_dense.yaml [compiled, bf16",
                "tiny_lowrank.yaml [compiled, bf16, recompute"):
        assert f"{row}, {step} step]" in report
    assert report.count("% in GEMMs and convolutions") == 6  # a profile of every row
