"""A low-rank model back into stock ESPnet: ``espnet-lowrank merge``.

    espnet-lowrank merge --config exp/asr_lrsms/config.yaml --model exp/asr_lrsms/valid.acc.ave.pth \\
        --out_dir exp/asr_lrsms_merged

Every factor pair becomes the dense weight it applies (U·V), so the model
needs neither this plugin nor its classes: the output is a ``config.yaml``
with ESPnet's own ``encoder: conformer`` / ``decoder: transformer`` and no
``lowrank_*`` option, and a ``model.pth`` that loads into it strictly. The
merged model is checked against the low-rank one before anything is written
(encoder and decoder outputs on random input, max abs difference ≤ 1e-4 in
fp32). It has the dense twin's parameter count: deploy it where installing
the plugin is a hurdle, keep the low-rank one where size matters.
"""

import argparse
import copy
import tempfile
from pathlib import Path
from typing import Dict

import torch
import yaml

from espnet_lowrank import packing
from espnet_lowrank.checkpoints import atomic_save
from espnet_lowrank.tools.command import command_main
from espnet_lowrank.errors import InputError
from espnet_lowrank.model_config import build_model, count_parameters, dense_twin, read_config, uses_low_rank
from espnet_lowrank.model_files import load_weights
from espnet_lowrank import training_extras
from espnet_lowrank.surgery import merge_low_rank

#: the largest difference between the outputs of the two models that is float rounding
TOLERANCE = 1e-4


@torch.no_grad()
def max_output_difference(first, second, seconds: float = 1.0, seed: int = 0) -> float:
    """Max abs difference of the encoder outputs and the decoder's logits of two ASR models."""
    generator = torch.Generator().manual_seed(seed)
    speech = torch.randn(2, int(16000 * seconds), generator=generator)
    lengths = torch.tensor([speech.shape[1], speech.shape[1] * 3 // 4])
    tokens = torch.randint(0, first.vocab_size, (2, 5), generator=generator)
    outputs = []
    for model in (first, second):
        model.eval()
        hidden, hidden_lengths = model.encode(speech, lengths)
        logits, _ = model.decoder(hidden, hidden_lengths, tokens, torch.tensor([5, 3]))
        outputs.append((hidden, logits))
    return max((a - b).abs().max().item() for a, b in zip(*outputs))


def merge(config, model_file, out_dir, pack=None) -> Dict[str, object]:
    """Write ``out_dir/config.yaml`` and ``out_dir/model.pth`` (and the ``pack`` zip, if given);
    returns what was merged."""
    values = read_config(config)
    if not uses_low_rank(values):
        raise InputError(f"config {config} builds no low-rank class (encoder: {values.get('encoder')}, "
                         f"decoder: {values.get('decoder')}): nothing to merge")
    model_file = Path(model_file)
    if not model_file.is_file():
        raise InputError(f"model {model_file} does not exist")
    low_rank = build_model(config)
    low_rank.load_state_dict(load_weights(model_file), strict=True)
    # in place on a copy: each factor pair becomes the dense layer it applies
    state = merge_low_rank(copy.deepcopy(low_rank)).state_dict()

    stock_values = dense_twin(values)
    stock_values["config"] = None  # the low-rank YAML the run was started from
    for option in training_extras.NAMES:  # ours: stock ESPnet's parser would refuse them
        stock_values.pop(option, None)
    with tempfile.TemporaryDirectory() as tmp:
        stock_config = Path(tmp) / "config.yaml"
        stock_config.write_text(yaml.safe_dump(stock_values, sort_keys=False))
        stock = build_model(stock_config)
    schedule = [key for key in state if key not in stock.state_dict() and ".lowrank_guide." in key]
    for key in schedule:  # a guide schedule's position: no weight, and nothing stock ESPnet knows
        del state[key]
    stock.load_state_dict(state, strict=True)
    difference = max_output_difference(low_rank, stock)
    if difference > TOLERANCE:
        raise RuntimeError(f"the merged model's outputs differ from the low-rank model's by {difference:.2e} "
                           f"(more than {TOLERANCE:g}): not written")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_save(state, out_dir / "model.pth")
    (out_dir / "config.yaml").write_text(yaml.safe_dump(stock_values, sort_keys=False))
    if pack:
        packing.pack_model(stock_values, out_dir / "model.pth", pack)
    return {"config": out_dir / "config.yaml", "model": out_dir / "model.pth",
            "low_rank_params": count_parameters(low_rank), "merged_params": count_parameters(stock),
            "max_difference": difference}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the low-rank run's saved config.yaml")
    parser.add_argument("--model", required=True, help="its weights, e.g. valid.acc.ave.pth")
    parser.add_argument("--out_dir", required=True, help="where config.yaml and model.pth go")
    parser.add_argument("--pack", help="also pack them into this asr_model.zip")


def run(args: argparse.Namespace) -> None:
    result = merge(args.config, args.model, args.out_dir, args.pack)
    print(f"wrote {result['config']} and {result['model']}: {result['low_rank_params'] / 1e6:.2f} M parameters "
          f"in low rank, {result['merged_params'] / 1e6:.2f} M merged; outputs differ by at most "
          f"{result['max_difference']:.1e}")


main = command_main(__doc__, add_arguments, run)

if __name__ == "__main__":
    main()
