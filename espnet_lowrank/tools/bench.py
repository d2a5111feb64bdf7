"""Side-by-side speed of ASR configs: ``espnet-lowrank bench DENSE.yaml LOWRANK.yaml``.

Times, interleaved config by config in every repeat, (a) a training step
(forward + backward + Adam) on a fixed synthetic batch of raw audio through
ESPnet's front end, (b) encoder inference on the same batch, and optionally
(c) full ``Speech2Text`` decoding of real utterances with trained models
(real-time factor). Prints medians, speed-ups against the first config, the
FLOP speed-up (the ceiling; counted by torch's FlopCounterMode) and
efficiency = measured speed-up / FLOP speed-up, plus training memory.
CUDA with autocast (``--amp bf16|fp16``) when ``--device cuda``.
"""

import argparse
import contextlib
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from espnet_lowrank import machine
from espnet_lowrank.cli import command_main
from espnet_lowrank.guide import finish_guides
from espnet_lowrank.model_config import build_model, count_parameters


#: Parts of an ESPnet ASR model whose training FLOPs are reported apart: low
#: rank shrinks some of them and leaves the others as they are.
FLOP_PARTS = ("frontend", "encoder.embed", "encoder.encoders", "decoder", "ctc")


@dataclass
class ConfigResult:
    config: str
    params: int
    train_step_s: List[float] = field(default_factory=list)
    encoder_s: List[float] = field(default_factory=list)
    decode_rtf: List[float] = field(default_factory=list)
    train_flops: int = 0
    train_flops_by_part: Dict[str, int] = field(default_factory=dict)
    encoder_flops: int = 0
    train_memory_mb: float = 0.0

    def median(self, name: str) -> Optional[float]:
        values = getattr(self, name)
        return statistics.median(values) if values else None


def synthetic_batch(batch: int, seconds: float, text_length: int, vocab: int, device) -> Dict:
    """A fixed batch of realistic shape: noise speech, lengths falling from
    100% to 80% as in a length-sorted batch, random token ids."""
    generator = torch.Generator().manual_seed(0)
    samples = int(seconds * 16000)
    lengths = torch.linspace(samples, 0.8 * samples, batch).long()
    text_lengths = torch.linspace(text_length, 0.8 * text_length, batch).long()
    speech = 0.1 * torch.randn(batch, samples, generator=generator)
    text = torch.randint(1, vocab - 1, (batch, text_length), generator=generator)
    return {
        "speech": speech.to(device), "speech_lengths": lengths.to(device),
        "text": text.to(device), "text_lengths": text_lengths.to(device),
    }


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


def timed(function: Callable[[], None], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


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


def training_memory_mb(model, step: Callable[[], None], device: str) -> float:
    """Peak training memory: CUDA's allocator peak, or on CPU the bytes of
    parameters, gradients and Adam's two moments plus every tensor autograd
    saves for backward (the part low rank changes besides the weights)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
        return torch.cuda.max_memory_allocated() / 2**20
    storages: Dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return (4 * weights + sum(storages.values())) / 2**20


def decode_rtf(speech2text, audio) -> float:
    start = time.perf_counter()
    speech2text(audio)
    return (time.perf_counter() - start) / (len(audio) / 16000)


def bench(
    configs: Sequence[str], vocab: int, batch: int = 8, seconds: float = 10.0, text_length: int = 40,
    repeats: int = 5, warmup: int = 1, device: str = "cpu", amp: str = "none",
    decode_exps: Sequence[str] = (), decode_model: str = "valid.acc.ave.pth",
    decode_wav_scp: Optional[str] = None, decode_utts: int = 10, decode_config: Optional[str] = None,
) -> Dict:
    data = synthetic_batch(batch, seconds, text_length, vocab, device)
    models, optimizers, results = [], [], []
    scaler = torch.amp.GradScaler(device, enabled=(amp == "fp16"))
    for config in configs:
        for label, model in _variants(config, vocab):
            model.to(device)
            models.append(model)
            optimizers.append(torch.optim.Adam(model.parameters(), lr=1e-5))
            results.append(ConfigResult(config=label, params=count_parameters(model)))
    for model, optimizer, result in zip(models, optimizers, results):
        model.train()
        step = lambda: train_step(model, optimizer, data, device, amp, scaler)  # noqa: E731
        result.train_flops, result.train_flops_by_part = counted_flops(step)
        result.train_memory_mb = training_memory_mb(model, step, device)
        model.eval()
        result.encoder_flops, _ = counted_flops(lambda: encoder_step(model, data, device, amp))
    for repeat in tqdm(range(warmup + repeats), desc="bench (train + encoder)", unit="round"):
        for model, optimizer, result in zip(models, optimizers, results):
            model.train()
            took = timed(lambda: train_step(model, optimizer, data, device, amp, scaler), device)
            model.eval()
            took_encoder = timed(lambda: encoder_step(model, data, device, amp), device)
            if repeat >= warmup:
                result.train_step_s.append(took)
                result.encoder_s.append(took_encoder)
    if decode_exps:
        _bench_decode(results, decode_exps, decode_model, decode_wav_scp, decode_utts, decode_config, device)
    return {"machine": _machine(device), "setup": {
        "batch": batch, "seconds": seconds, "text_length": text_length, "repeats": repeats,
        "warmup": warmup, "device": device, "amp": amp, "vocab": vocab,
    }, "results": [_summarise(r, results[0]) for r in results]}


def _variants(config, vocab: int) -> List[Tuple[str, torch.nn.Module]]:
    """The model of ``config``; a guided one twice: half way through its
    schedule (cosine/linear: both paths; switch: the guides alone) and after
    it (plain low rank)."""
    torch.manual_seed(0)
    model = build_model(config, vocab_size=vocab)
    schedules = [m.lowrank_guide for m in model.modules() if getattr(m, "lowrank_guide", None) is not None]
    if not schedules:
        return [(str(config), model)]
    for schedule in schedules:
        schedule.step.fill_(schedule.steps // 2)
        schedule.sync()
    torch.manual_seed(0)
    finished = finish_guides(build_model(config, vocab_size=vocab))
    return [(f"{config} [guide on]", model), (f"{config} [guide done]", finished)]


def _bench_decode(results, decode_exps, decode_model, wav_scp, utts, decode_config, device) -> None:
    import soundfile
    import yaml
    from espnet2.bin.asr_inference import Speech2Text

    if len(decode_exps) != len(results):
        raise ValueError(f"--decode_exp needs one exp dir per config ({len(results)}), got {len(decode_exps)}")
    if wav_scp is None:
        raise ValueError("--decode_exp needs --decode_wav_scp: the utterances to decode")
    # the decoding options of run.sh's --inference_config (Speech2Text's arguments)
    options = yaml.safe_load(Path(decode_config).read_text()) if decode_config else {"beam_size": 5}
    for exp in decode_exps:
        stats = (yaml.safe_load((Path(exp) / "config.yaml").read_text()).get("normalize_conf") or {}).get("stats_file")
        if stats and not Path(stats).exists():
            raise ValueError(f"{exp}/config.yaml names normalize_conf.stats_file {stats}, which is not "
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


def _summarise(result: ConfigResult, first: ConfigResult) -> Dict:
    summary = asdict(result)
    for name in ("train_step_s", "encoder_s", "decode_rtf"):
        ours, theirs = result.median(name), first.median(name)
        summary[f"{name}_median"] = ours
        summary[f"{name}_speedup"] = theirs / ours if ours and theirs else None
    summary["params_ratio"] = first.params / result.params
    summary["train_flop_speedup"] = first.train_flops / result.train_flops
    summary["encoder_flop_speedup"] = first.encoder_flops / result.encoder_flops
    summary["train_efficiency"] = summary["train_step_s_speedup"] / summary["train_flop_speedup"]
    summary["encoder_efficiency"] = summary["encoder_s_speedup"] / summary["encoder_flop_speedup"]
    return summary


def _machine(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    return f"{machine.describe()}, torch threads {torch.get_num_threads()}, torch {torch.__version__}"


def format_results(result: Dict) -> str:
    setup = result["setup"]
    names = [Path(r["config"]).name for r in result["results"]]
    width = max(34, *map(len, names))
    lines = [
        f"machine: {result['machine']}",
        f"batch: {setup['batch']} x {setup['seconds']} s raw audio, {setup['text_length']} tokens, "
        f"vocab {setup['vocab']}; median of {setup['repeats']} (after {setup['warmup']} warm-up); "
        f"device {setup['device']}, amp {setup['amp']}",
        "",
        f"{'config':{width}} {'params':>8} {'train s':>8} {'speed-up':>8} {'FLOP x':>7} {'effic.':>6} "
        f"{'enc s':>7} {'speed-up':>8} {'FLOP x':>7} {'effic.':>6} {'mem MB':>8} {'RTF':>6}",
    ]
    for name, r in zip(names, result["results"]):
        rtf = f"{r['decode_rtf_median']:.3f}" if r["decode_rtf_median"] else "-"
        lines.append(
            f"{name:{width}} {r['params'] / 1e6:>7.2f}M {r['train_step_s_median']:>8.3f} "
            f"{r['train_step_s_speedup']:>7.2f}x {r['train_flop_speedup']:>6.2f}x {r['train_efficiency']:>6.2f} "
            f"{r['encoder_s_median']:>7.3f} {r['encoder_s_speedup']:>7.2f}x {r['encoder_flop_speedup']:>6.2f}x "
            f"{r['encoder_efficiency']:>6.2f} {r['train_memory_mb']:>8.1f} {rtf:>6}"
        )
    lines += ["", "training step GFLOP (forward + backward) by part:",
              f"{'config':{width}} {'total':>8} " + " ".join(f"{part:>16}" for part in FLOP_PARTS)]
    for name, r in zip(names, result["results"]):
        lines.append(
            f"{name:{width}} {r['train_flops'] / 1e9:>8.1f} "
            + " ".join(f"{r['train_flops_by_part'][part] / 1e9:>16.1f}" for part in FLOP_PARTS)
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="+", help="ESPnet ASR training YAMLs; ratios are against the first")
    parser.add_argument("--vocab", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per utterance")
    parser.add_argument("--text_length", type=int, default=40, help="tokens per utterance")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
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
        args.decode_wav_scp, args.decode_utts, args.decode_config,
    )
    print(json.dumps(result, indent=1) if args.json else format_results(result))


main = command_main(__doc__, add_arguments, run)

if __name__ == "__main__":
    main()
