"""A low-rank model back into stock ESPnet, the library behind ``espnet-lowrank merge``: every factor pair
becomes the dense weight it applies (U·V), the config ESPnet's own classes with no ``lowrank_*`` option.
The merged model is checked against the low-rank one before anything is written."""

import copy
from pathlib import Path
from typing import Dict

import torch
import yaml

from espnet_lowrank import packing, training_extras
from espnet_lowrank.atomic import write_text
from espnet_lowrank.checkpoints import atomic_save
from espnet_lowrank.errors import InputError
from espnet_lowrank.model_config import build_model, count_parameters, dense_twin, read_config, uses_low_rank
from espnet_lowrank.model_files import load_weights
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
    stock = build_model(stock_values, where=f"the dense twin of {config}")
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
    write_text(out_dir / "config.yaml", yaml.safe_dump(stock_values, sort_keys=False))
    if pack:
        packing.pack_model(stock_values, out_dir / "model.pth", pack)
    return {"config": out_dir / "config.yaml", "model": out_dir / "model.pth",
            "low_rank_params": count_parameters(low_rank), "merged_params": count_parameters(stock),
            "max_difference": difference}
