"""Build an ESPnet ASR model from a training YAML, the way ``asr_train`` does.

Used by the tools (report, bench) and the tests, so that every count they give
is the count of the model ESPnet itself builds from that file.
"""

import argparse
from pathlib import Path
from typing import List, Optional, Sequence, Union

import espnet_lowrank  # noqa: F401  (registers the low-rank classes)
from espnet2.tasks.asr import ASRTask


def read_token_list(path: Union[str, Path]) -> List[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token list {path} does not exist")
    return [line.rstrip("\n") for line in path.open(encoding="utf-8")]


def config_args(
    config: Union[str, Path],
    token_list: Optional[Sequence[str]] = None,
    vocab_size: Optional[int] = None,
    overrides: Sequence[str] = (),
) -> argparse.Namespace:
    """ESPnet's parsed training arguments for ``config``. The vocabulary comes
    from ``token_list``, from ``vocab_size`` placeholder tokens, or from the
    config's own ``token_list`` file, in that order."""
    config = Path(config)
    if not config.is_file():
        raise FileNotFoundError(f"config {config} does not exist")
    args = ASRTask.get_parser().parse_args(["--config", str(config), *overrides])
    if token_list is not None:
        args.token_list = list(token_list)
    elif vocab_size is not None:
        if vocab_size < 2:
            raise ValueError(f"vocab_size={vocab_size}: need at least 2 tokens")
        args.token_list = ["<blank>", *(f"tok{i}" for i in range(vocab_size - 2)), "<sos/eos>"]
    elif isinstance(args.token_list, str):
        args.token_list = read_token_list(args.token_list)
    else:
        raise ValueError(
            f"{config} names no token_list: pass a token list or a vocabulary size"
        )
    return args


def build_model(config, token_list=None, vocab_size=None, overrides=()):
    """The ``ESPnetASRModel`` that ``asr_train`` would build from ``config``."""
    return ASRTask.build_model(config_args(config, token_list, vocab_size, overrides))


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())
