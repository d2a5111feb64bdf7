"""How far one optimiser step moves W = U·V: ``python dev/step_check.py CONFIG``.

    python dev/step_check.py conf/train_asr_lrsms_demo.yaml \\
        --data_dir dump/raw/train --token_list data/token_list/train/char/tokens.txt

Builds the low-rank model of CONFIG and its merged dense twin (every factor
pair replaced by the dense layer U·V: the same function, so the same loss and
the same gradient G for each merged W), takes one step of the config's own
optimiser (``optim``/``optim_conf``; no scheduler, so at ``optim_conf.lr``) on
a real batch in each, and compares, per factorised layer, the change of W:

* ``move``: ‖ΔW_lowrank‖ / ‖ΔW_dense‖ (Frobenius norms);
* ``descent``: ⟨G, ΔW_lowrank⟩ / ⟨G, ΔW_dense⟩, the first-order loss decrease
  of the low-rank step relative to the dense one;

plus the batch loss decrease of the whole model after the step. A factor pair
that moves W less, or in a direction that lowers the loss less, learns more
slowly at the same learning rate. Medians per layer group over ``--batches``.
"""

import argparse
import copy
import json
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import soundfile
import torch

from espnet_lowrank.tools.command import command_main
from espnet_lowrank.kaldi_table import read_table
from espnet_lowrank.errors import InputError
from espnet_lowrank.model_config import build_model, config_args, read_token_list
from espnet_lowrank.model_files import load_weights
from espnet_lowrank.surgery import low_rank_layers, merge_low_rank


def real_batches(data_dir: Path, token_list: List[str], batches: int, batch_size: int, seed: int) -> List[Dict]:
    """``batches`` padded batches of ``batch_size`` utterances drawn at random
    (with ``seed``) from a Kaldi-style data dir, tokenised as characters."""
    from espnet2.text.char_tokenizer import CharTokenizer
    from espnet2.text.token_id_converter import TokenIDConverter

    wavs, texts = read_table(data_dir / "wav.scp"), read_table(data_dir / "text")
    utts = sorted(set(wavs) & set(texts))
    needed = batches * batch_size
    if len(utts) < needed:
        raise InputError(f"{data_dir} has {len(utts)} utterances with audio and text; {needed} needed")
    order = torch.randperm(len(utts), generator=torch.Generator().manual_seed(seed))[:needed]
    tokenizer, converter = CharTokenizer(space_symbol="<space>"), TokenIDConverter(token_list)
    result = []
    for start in range(0, needed, batch_size):
        chosen = [utts[i] for i in order[start:start + batch_size]]
        speech = [torch.from_numpy(soundfile.read(wavs[u], dtype="float32")[0]) for u in chosen]
        text = [torch.tensor(converter.tokens2ids(tokenizer.text2tokens(texts[u]))) for u in chosen]
        result.append({
            "speech": torch.nn.utils.rnn.pad_sequence(speech, batch_first=True),
            "speech_lengths": torch.tensor([len(s) for s in speech]),
            "text": torch.nn.utils.rnn.pad_sequence(text, batch_first=True, padding_value=-1),
            "text_lengths": torch.tensor([len(t) for t in text]),
        })
    return result


def _weights(model, names: Sequence[str]) -> Dict[str, torch.Tensor]:
    """The (merged) weight of each named layer, as an ``out × in`` matrix."""
    modules = dict(model.named_modules())
    result = {}
    for name in names:
        module = modules[name]
        weight = module.to_dense_weight() if hasattr(module, "to_dense_weight") else module.weight
        result[name] = weight.detach().reshape(weight.shape[0], -1).clone()
    return result


def _one_step(model, args, batch, seed: int, names: Sequence[str]):
    """Loss, per-layer weights before and after one optimiser step, loss after
    (same dropout and SpecAugment draws, by re-seeding), and each merged
    layer's weight gradient when the model is the dense twin."""
    from espnet2.tasks.asr import ASRTask

    optimizer = ASRTask.build_optimizers(args, model)[0]
    model.train()
    before = _weights(model, names)
    torch.manual_seed(seed)
    loss = model(**batch)[0]
    loss.backward()
    modules = dict(model.named_modules())
    grads = {n: modules[n].weight.grad.reshape(modules[n].weight.shape[0], -1).clone()
             for n in names if hasattr(modules[n], "weight")}
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    after = _weights(model, names)
    with torch.no_grad():
        torch.manual_seed(seed)
        loss_after = model(**batch)[0]
    return loss.item(), before, after, grads, loss_after.item()


def step_check(config, data_dir, token_list, batches: int = 4, batch_size: int = 8,
               seed: int = 0, checkpoint: Optional[str] = None) -> Dict:
    tokens = read_token_list(token_list)
    args = config_args(config, token_list=tokens)
    torch.manual_seed(seed)
    lowrank = build_model(config, token_list=tokens)
    if checkpoint is not None:
        lowrank.load_state_dict(load_weights(checkpoint), strict=True)
    layers = low_rank_layers(lowrank)
    if not layers:
        raise InputError(f"{config} has no low-rank layers to check")
    names = [n for n, _ in layers]
    from espnet_lowrank.inventory import layer_rows

    groups = {r.module: f"{r.part} {r.group}" for r in layer_rows(lowrank)}
    per_layer: Dict[str, Dict[str, List[float]]] = {n: {"move": [], "descent": []} for n in names}
    loss_ratio = []
    for index, batch in enumerate(real_batches(Path(data_dir), tokens, batches, batch_size, seed)):
        ours, dense = copy.deepcopy(lowrank), merge_low_rank(copy.deepcopy(lowrank))
        loss0, lr_before, lr_after, _, lr_loss1 = _one_step(ours, args, batch, seed + index, names)
        dense_loss0, d_before, d_after, grads, d_loss1 = _one_step(dense, args, batch, seed + index, names)
        if abs(loss0 - dense_loss0) > 1e-3 * abs(dense_loss0):
            raise RuntimeError(f"the merged dense twin's loss {dense_loss0} differs from {loss0}")
        for name in names:
            step_lr, step_dense = lr_after[name] - lr_before[name], d_after[name] - d_before[name]
            per_layer[name]["move"].append((step_lr.norm() / step_dense.norm()).item())
            per_layer[name]["descent"].append(
                ((grads[name] * step_lr).sum() / (grads[name] * step_dense).sum()).item())
        loss_ratio.append((loss0 - lr_loss1) / (dense_loss0 - d_loss1))
    by_group: Dict[str, Dict[str, float]] = {}
    for group in dict.fromkeys(groups[n] for n in names):
        members = [n for n in names if groups[n] == group]
        by_group[group] = {
            "layers": len(members),
            **{metric: statistics.median(v for n in members for v in per_layer[n][metric])
               for metric in ("move", "descent")},
        }
    return {
        "config": str(config), "optim": args.optim, "lr": args.optim_conf.get("lr"),
        "batches": batches, "batch_size": batch_size,
        "groups": by_group,
        "all_layers": {metric: statistics.median(v for n in names for v in per_layer[n][metric])
                       for metric in ("move", "descent")},
        "loss_decrease_ratio": statistics.median(loss_ratio),
        "layers": {n: {m: statistics.median(v) for m, v in per_layer[n].items()} for n in names},
    }


def format_result(result: Dict) -> str:
    lines = [
        f"{result['config']}: one {result['optim']} step at lr {result['lr']}, "
        f"median over {result['batches']} batches of {result['batch_size']} utterances",
        "",
        f"{'group':28} {'layers':>6} {'move':>7} {'descent':>8}",
    ]
    for group, row in result["groups"].items():
        lines.append(f"{group:28} {row['layers']:>6} {row['move']:>7.3f} {row['descent']:>8.3f}")
    everything = result["all_layers"]
    lines += [
        f"{'all factorised layers':28} {len(result['layers']):>6} {everything['move']:>7.3f} "
        f"{everything['descent']:>8.3f}",
        "",
        f"batch loss decrease of the low-rank step / the dense step: {result['loss_decrease_ratio']:.3f}",
        "move = |dW low rank| / |dW dense|; descent = <G, dW low rank> / <G, dW dense> (1.0: as dense)",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a low-rank ESPnet ASR training YAML (or a saved config.yaml)")
    parser.add_argument("--data_dir", type=Path, required=True, help="Kaldi-style dir: wav.scp, text")
    parser.add_argument("--token_list", type=Path, required=True, help="char tokens.txt of the recipe")
    parser.add_argument("--checkpoint", default=None, help="check from these weights instead of the init")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> None:
    result = step_check(args.config, args.data_dir, args.token_list, args.batches, args.batch_size,
                        args.seed, args.checkpoint)
    print(json.dumps(result, indent=1) if args.json else format_result(result))


main = command_main(__doc__, add_arguments, run)

if __name__ == "__main__":
    main()
