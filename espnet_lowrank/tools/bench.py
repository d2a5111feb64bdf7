"""Side-by-side speed of ASR configs: ``espnet-lowrank bench DENSE.yaml LOWRANK.yaml``.

Times, interleaved row by row in every repeat, (a) a training step
(forward + backward + Adam) on a fixed synthetic batch of raw audio through
ESPnet's front end, (b) encoder inference on the same batch, and optionally
(c) full ``Speech2Text`` decoding of real utterances with trained models
(real-time factor). A row is a config run one way: eager or compiled
(``--mode``), fp32 or autocast (``--amp``), with a cheaper CPU step or not
(``--cpu_step``, as a training's), and with ``--recompute`` its factorised
layers memory-lean too. The batch is ``--batch`` utterances, or
the one ESPnet's numel sampler builds for ``--batch_bins`` (the recipe's).
Prints medians, speed-ups against the first row and against the first
config run the same way, achieved TFLOP/s, the FLOP speed-up (the ceiling;
counted by torch's FlopCounterMode) and efficiency = measured speed-up /
FLOP speed-up, the bytes autograd saves for backward and training memory;
with ``--profile N`` the top operators of each row's step.
"""

import argparse
import contextlib
import itertools
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from espnet_lowrank import machine
from espnet_lowrank.tools.command import command_main
from espnet_lowrank.compiling import compile_blocks
from espnet_lowrank.cpu_precision import features_outside_autocast
from espnet_lowrank.cpu_step import DEFAULT as DEFAULT_CPU_STEP, SETTINGS as CPU_STEPS, apply as apply_cpu_step
from espnet_lowrank.cpu_step import chosen as chosen_cpu_step
from espnet_lowrank.errors import InputError
from espnet_lowrank.guide import finish_guides
from espnet_lowrank.model_config import build_model, count_parameters
from espnet_lowrank.surgery import set_recompute
from espnet_lowrank.layer_speed import timed
from espnet_lowrank.recipe_batch import LIBRISPEECH_100_BATCH_BINS, recipe_batch, synthetic_batch
from espnet_lowrank.step_profile import format_profile, profile_step


#: Parts of an ESPnet ASR model whose training FLOPs are reported apart: low
#: rank shrinks some of them and leaves the others as they are.
FLOP_PARTS = ("frontend", "encoder.embed", "encoder.encoders", "decoder", "ctc")


@dataclass
class ConfigResult:
    config: str
    params: int
    mode: str = "eager"
    amp: str = "none"
    recompute: bool = False
    cpu_step: str = "stock"
    train_step_s: List[float] = field(default_factory=list)
    encoder_s: List[float] = field(default_factory=list)
    decode_rtf: List[float] = field(default_factory=list)
    train_flops: int = 0
    train_flops_by_part: Dict[str, int] = field(default_factory=dict)
    encoder_flops: int = 0
    saved_activation_mb: float = 0.0
    train_memory_mb: float = 0.0
    profile: Optional[str] = None
    gemm_share: Optional[float] = None

    @property
    def way(self) -> Tuple[str, str, str]:
        """How the row runs, apart from its config."""
        return self.mode, self.amp, self.cpu_step

    @property
    def label(self) -> str:
        extras = ([self.mode] + ([self.amp] if self.amp != "none" else []) + (["recompute"] if self.recompute else [])
                  + [f"{self.cpu_step} step"])
        return f"{Path(self.config).name} [{', '.join(extras)}]"

    def median(self, name: str) -> Optional[float]:
        values = getattr(self, name)
        return statistics.median(values) if values else None


def autocast(device: str, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def train_step(model, optimizer, batch, device, amp, scaler) -> None:
    with autocast(device, amp):
        loss = model(**batch)[0]
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def encoder_step(model, batch, device, amp) -> None:
    with torch.inference_mode(), autocast(device, amp):
        model.encode(batch["speech"], batch["speech_lengths"])


def counted_flops(function: Callable[[], None]) -> Tuple[int, Dict[str, int]]:
    """Total FLOPs of ``function`` (forward and backward) and those of each
    of :data:`FLOP_PARTS`."""
    with FlopCounterMode(display=False, depth=4) as counter:
        function()
    # module names are "<model class>.encoder.embed"; a container that is
    # iterated rather than called (ESPnet's encoder blocks) only has its children
    by_module = {name.partition(".")[2]: sum(ops.values())
                 for name, ops in counter.get_flop_counts().items()}

    def flops(part: str) -> int:
        if part in by_module:
            return by_module[part]
        return sum(n for name, n in by_module.items()
                   if name.startswith(part + ".") and "." not in name[len(part) + 1:])

    return counter.get_total_flops(), {part: flops(part) for part in FLOP_PARTS}


def saved_activation_bytes(model: torch.nn.Module, step: Callable[[], None]) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of ``step``,
    counted once per storage, the model's parameters left out: what a
    training step holds besides weights, gradients and optimiser state, on
    any device."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: Dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(storages.values())


def training_memory_mb(model, step: Callable[[], None], device: str) -> float:
    """Training memory of ``model``: parameters, gradients and Adam's two
    moments plus, on CUDA, what the allocator's peak rises during a step
    (activations, gradients' buffers, workspaces; other models resident on
    the device do not count), on CPU every tensor autograd saves for backward."""
    weights = _weight_bytes(model)
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        return (torch.cuda.max_memory_allocated() - before + 3 * weights) / 2**20
    return (4 * weights + saved_activation_bytes(model, step)) / 2**20


def _weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def decode_rtf(speech2text, audio) -> float:
    start = time.perf_counter()
    speech2text(audio)
    return (time.perf_counter() - start) / (len(audio) / 16000)


def bench(
    configs: Sequence[str], vocab: int, batch: int = 8, seconds: float = 10.0, text_length: int = 40,
    repeats: int = 5, warmup: int = 1, device: str = "cpu", amp: Union[str, Sequence[str]] = "none",
    decode_exps: Sequence[str] = (), decode_model: str = "valid.acc.ave.pth",
    decode_wav_scp: Optional[str] = None, decode_utts: int = 10, decode_config: Optional[str] = None,
    modes: Sequence[str] = ("eager",), recompute: bool = False, batch_bins: Optional[int] = None,
    shape_files: Sequence[str] = (), profile: int = 0, cpu_steps: Optional[Sequence[str]] = None,
) -> Dict:
    amps = [amp] if isinstance(amp, str) else list(amp)
    cpu_steps = cpu_steps or [chosen_cpu_step(DEFAULT_CPU_STEP, device)]
    if "compiled" in modes and warmup < 1:
        raise InputError("bench: compiled rows need --warmup 1 or more (the first step compiles)")
    if batch_bins:
        speech_lengths, text_lengths = recipe_batch(batch_bins, vocab, seconds, text_length, shape_files)
        data = synthetic_batch(0, seconds, text_length, vocab, device, speech_lengths, text_lengths)
    else:
        data = synthetic_batch(batch, seconds, text_length, vocab, device)
    scaler = torch.amp.GradScaler(device, enabled="fp16" in amps)
    rows = []
    for config in configs:
        for label, build in _variants(config, vocab):
            for lean in ([False, True] if recompute and _has_factor_pairs(build()) else [False]):
                for mode in modes:
                    for row_amp, step in itertools.product(amps, cpu_steps):
                        rows.append(_Row(build, ConfigResult(config=label, params=0, mode=mode, amp=row_amp,
                                                             recompute=lean, cpu_step=step), device, data, scaler))
    for row in tqdm(rows, desc="bench (FLOPs and memory)", unit="row"):
        row.count()
    for repeat in tqdm(range(warmup + repeats), desc="bench (train + encoder)", unit="round"):
        for row in rows:
            row.time(keep=repeat >= warmup)
    results = [row.result for row in rows]
    if device == "cuda":  # the allocator's peak, once compiled steps have settled
        for row in rows:
            row.result.train_memory_mb = training_memory_mb(row.model, row.train_step, device)
    for row in rows[:] if profile else []:
        measured = profile_step(row.train_step, device, top=profile)
        row.result.profile = format_profile(row.result.label, measured)
        row.result.gemm_share = measured.gemm_share
    if decode_exps:
        _bench_decode(results, decode_exps, decode_model, decode_wav_scp, decode_utts, decode_config, device)
    lengths = data["speech_lengths"].tolist()
    return {"machine": _machine(device), "setup": {
        "batch": len(lengths), "seconds": max(lengths) / 16000, "text_length": int(data["text_lengths"].max()),
        "batch_bins": batch_bins, "repeats": repeats, "warmup": warmup, "device": device, "amp": amps,
        "modes": list(modes), "cpu_step": list(cpu_steps), "vocab": vocab, "threads": torch.get_num_threads(),
    }, "results": [_summarise(r, results) for r in results]}


class _Row:
    """One config run one way: its own model, optimiser and timings."""

    def __init__(self, build, result: ConfigResult, device: str, data: Dict, scaler):
        self.model = build().to(device)
        if result.recompute:
            set_recompute(self.model, True)
        apply_cpu_step(self.model, result.cpu_step)
        if device == "cpu":  # as a bf16 CPU training computes them
            features_outside_autocast(self.model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-5)
        self.result, self.device, self.data, self.scaler = result, device, data, scaler
        result.params = count_parameters(self.model)

    def train_step(self) -> None:
        self.model.train()
        train_step(self.model, self.optimizer, self.data, self.device, self.result.amp, self.scaler)

    def encoder_step(self) -> None:
        self.model.eval()
        encoder_step(self.model, self.data, self.device, self.result.amp)

    def count(self) -> None:
        """FLOPs and saved bytes, counted eagerly; then the row is compiled if it is to be."""
        result = self.result
        result.train_flops, result.train_flops_by_part = counted_flops(self.train_step)
        saved = saved_activation_bytes(self.model, self.train_step)
        result.saved_activation_mb = saved / 2**20
        if self.device != "cuda":  # as training_memory_mb counts it, without another step
            result.train_memory_mb = (4 * _weight_bytes(self.model) + saved) / 2**20
        result.encoder_flops, _ = counted_flops(self.encoder_step)
        if result.mode == "compiled":
            compile_blocks(self.model)

    def time(self, keep: bool) -> None:
        took = timed(self.train_step, self.device)
        # a compiled encoder would compile again for inference: encoder inference is timed eagerly only
        took_encoder = timed(self.encoder_step, self.device) if self.result.mode == "eager" else None
        if keep:
            self.result.train_step_s.append(took)
            if took_encoder is not None:
                self.result.encoder_s.append(took_encoder)


def _has_factor_pairs(model: torch.nn.Module) -> bool:
    return set_recompute(model, False) > 0


def _variants(config, vocab: int) -> List[Tuple[str, Callable[[], torch.nn.Module]]]:
    """Builders of the model of ``config``; a guided one twice: half way
    through its schedule (cosine/linear: both paths; switch: the guides
    alone) and after it (plain low rank). Every build starts from seed 0."""

    def plain():
        torch.manual_seed(0)
        return build_model(config, vocab_size=vocab)

    def guide_on():
        model = plain()
        for schedule in _schedules(model):
            schedule.step.fill_(schedule.steps // 2)
            schedule.sync()
        return model

    if not _schedules(plain()):
        return [(str(config), plain)]
    return [(f"{config} [guide on]", guide_on), (f"{config} [guide done]", lambda: finish_guides(plain()))]


def _schedules(model: torch.nn.Module) -> list:
    return [m.lowrank_guide for m in model.modules() if getattr(m, "lowrank_guide", None) is not None]


def _bench_decode(results, decode_exps, decode_model, wav_scp, utts, decode_config, device) -> None:
    import soundfile
    import yaml
    from espnet2.bin.asr_inference import Speech2Text

    if len(decode_exps) != len(results):
        raise InputError(f"--decode_exp needs one exp dir per config ({len(results)}), got {len(decode_exps)}")
    if wav_scp is None:
        raise InputError("--decode_exp needs --decode_wav_scp: the utterances to decode")
    # the decoding options of run.sh's --inference_config (Speech2Text's arguments)
    options = yaml.safe_load(Path(decode_config).read_text()) if decode_config else {"beam_size": 5}
    for exp in decode_exps:
        stats = (yaml.safe_load((Path(exp) / "config.yaml").read_text()).get("normalize_conf") or {}).get("stats_file")
        if stats and not Path(stats).exists():
            raise InputError(f"{exp}/config.yaml names normalize_conf.stats_file {stats}, which is not "
                             f"found from {Path.cwd()}: run bench from the recipe dir, as ESPnet decodes")
    paths = [line.split(maxsplit=1)[1] for line in Path(wav_scp).read_text().splitlines()[:utts]]
    audios = [soundfile.read(p, dtype="float32")[0] for p in paths]
    decoders = [
        Speech2Text(asr_train_config=str(Path(e) / "config.yaml"),
                    asr_model_file=str(Path(e) / decode_model), device=device, **options)
        for e in decode_exps
    ]
    for audio in tqdm(audios, desc="bench (decode)", unit="utt"):
        for speech2text, result in zip(decoders, results):
            result.decode_rtf.append(decode_rtf(speech2text, audio))


def _summarise(result: ConfigResult, results: Sequence[ConfigResult]) -> Dict:
    """Ratios against the first row, and against the first config run the same way."""
    first = results[0]
    same_way = next(r for r in results if r.way == result.way and not r.recompute)
    summary = asdict(result)
    summary["label"] = result.label
    for name in ("train_step_s", "encoder_s", "decode_rtf"):
        ours, theirs = result.median(name), first.median(name)
        summary[f"{name}_median"] = ours
        summary[f"{name}_speedup"] = theirs / ours if ours and theirs else None
    step = result.median("train_step_s")
    summary["train_step_s_speedup_same_way"] = same_way.median("train_step_s") / step if step else None
    summary["train_tflops"] = result.train_flops / step / 1e12 if step else None
    summary["params_ratio"] = first.params / result.params
    summary["train_flop_speedup"] = first.train_flops / result.train_flops
    summary["encoder_flop_speedup"] = first.encoder_flops / result.encoder_flops
    summary["train_efficiency"] = _ratio(summary["train_step_s_speedup"], summary["train_flop_speedup"])
    summary["encoder_efficiency"] = _ratio(summary["encoder_s_speedup"], summary["encoder_flop_speedup"])
    return summary


def _ratio(measured: Optional[float], ceiling: float) -> Optional[float]:
    return measured / ceiling if measured is not None else None


def _machine(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    return f"{machine.describe()}, torch threads {torch.get_num_threads()}, torch {torch.__version__}"


def format_results(result: Dict) -> str:
    setup = result["setup"]
    rows = result["results"]
    names = [Path(r["config"]).name if setup["modes"] == ["eager"] and len(setup["amp"]) == 1 and not
             any(r["recompute"] for r in rows) and len(setup["cpu_step"]) == 1 else r["label"] for r in rows]
    width = max(34, *map(len, names))
    bins = f", batch_bins {setup['batch_bins']} (ESPnet's numel sampler)" if setup.get("batch_bins") else ""
    lines = [
        f"machine: {result['machine']}",
        f"batch: {setup['batch']} x {setup['seconds']:.2f} s raw audio, {setup['text_length']} tokens, "
        f"vocab {setup['vocab']}{bins}; median of {setup['repeats']} (after {setup['warmup']} warm-up); "
        f"device {setup['device']}, amp {', '.join(setup['amp'])}, modes {', '.join(setup['modes'])}, "
        f"cpu step {', '.join(setup['cpu_step'])}",
        "speed-up: against the first row; vs same: against the first config run the same way (mode, amp, step)",
        "",
        f"{'config':{width}} {'params':>8} {'train s':>8} {'speed-up':>8} {'vs same':>7} {'TFLOP/s':>7} "
        f"{'FLOP x':>7} {'effic.':>6} {'enc s':>7} {'speed-up':>8} {'saved MB':>8} {'mem MB':>8} {'RTF':>6}",
    ]
    for name, r in zip(names, rows):
        lines.append(
            f"{name:{width}} {r['params'] / 1e6:>7.2f}M {r['train_step_s_median']:>8.3f} "
            f"{r['train_step_s_speedup']:>7.2f}x {r['train_step_s_speedup_same_way']:>6.2f}x "
            f"{r['train_tflops']:>7.3f} {r['train_flop_speedup']:>6.2f}x {r['train_efficiency']:>6.2f} "
            f"{_number(r['encoder_s_median'], '.3f'):>7} {_number(r['encoder_s_speedup'], '.2f', 'x'):>8} "
            f"{r['saved_activation_mb']:>8.1f} {r['train_memory_mb']:>8.1f} {_number(r['decode_rtf_median'], '.3f'):>6}"
        )
    lines += ["", "training step GFLOP (forward + backward) by part:",
              f"{'config':{width}} {'total':>8} " + " ".join(f"{part:>16}" for part in FLOP_PARTS)]
    for name, r in zip(names, rows):
        lines.append(
            f"{name:{width}} {r['train_flops'] / 1e9:>8.1f} "
            + " ".join(f"{r['train_flops_by_part'][part] / 1e9:>16.1f}" for part in FLOP_PARTS)
        )
    profiles = [r["profile"] for r in rows if r["profile"]]
    if profiles:
        lines += ["", "where one training step's time goes (torch.profiler, self time):", *profiles]
    return "\n".join(lines)


def _number(value: Optional[float], spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="+", help="ESPnet ASR training YAMLs; ratios are against the first")
    parser.add_argument("--vocab", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=8, help="utterances per batch (unless --batch_bins)")
    parser.add_argument("--batch_bins", type=int, nargs="?", const=LIBRISPEECH_100_BATCH_BINS, default=None,
                        help="the batch ESPnet's numel sampler builds for this many bins (alone: "
                             f"{LIBRISPEECH_100_BATCH_BINS}, the LibriSpeech-100 recipe's)")
    parser.add_argument("--shape_files", nargs=2, default=(), metavar=("SPEECH_SHAPE", "TEXT_SHAPE"),
                        help="with --batch_bins: a recipe's shape files (the middle batch is timed); "
                             "default: utterances of --seconds and --text_length")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per utterance")
    parser.add_argument("--text_length", type=int, default=40, help="tokens per utterance")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (compiling happens there)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", nargs="+", default=["none"], choices=["none", "bf16", "fp16"],
                        help="one row per value (autocast dtype)")
    parser.add_argument("--mode", nargs="+", default=["eager"], choices=["eager", "compiled"],
                        help="one row per value: compiled = torch.compile on every encoder/decoder block")
    parser.add_argument("--cpu_step", nargs="+", default=None, choices=CPU_STEPS,
                        help="one row per value, as asr_train's --cpu_step: fast (channels-last 2-D convolutions, "
                             "dropout masks from torch.rand), channels_last or stock; default: what a training "
                             "on --device does (fast on a CPU, stock on CUDA)")
    parser.add_argument("--recompute", action="store_true",
                        help="also a row of each low-rank config with memory-lean factor pairs")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile one step of each row and print its top N operators")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--decode_exp", nargs="*", default=[],
                        help="one trained exp dir per config (config.yaml + model) to time decoding")
    parser.add_argument("--decode_model", default="valid.acc.ave.pth")
    parser.add_argument("--decode_wav_scp", default=None)
    parser.add_argument("--decode_utts", type=int, default=10)
    parser.add_argument("--decode_config", default=None,
                        help="decoding YAML as run.sh's --inference_config (default: beam 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    result = bench(
        args.configs, args.vocab, args.batch, args.seconds, args.text_length, args.repeats,
        args.warmup, args.device, args.amp, args.decode_exp, args.decode_model,
        args.decode_wav_scp, args.decode_utts, args.decode_config, modes=args.mode,
        recompute=args.recompute, batch_bins=args.batch_bins, shape_files=args.shape_files, profile=args.profile,
        cpu_steps=args.cpu_step,
    )
    print(json.dumps(result, indent=1) if args.json else format_results(result))


main = command_main(__doc__, add_arguments, run)

if __name__ == "__main__":
    main()
