"""Build an ESPnet ASR model from a training YAML, the way ``asr_train`` does.

Used by the tools (report, bench) and the tests, so that every count they give
is the count of the model ESPnet itself builds from that file.
"""

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Union

import yaml

import espnet_lowrank  # noqa: F401  (registers the low-rank classes)

# espnet 202511 prints a flash-attention notice on stdout while importing its
# task; keep stdout clean for the tools' --json output.
with contextlib.redirect_stdout(sys.stderr):
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
    overrides: Mapping[str, Any] = {},
) -> argparse.Namespace:
    """ESPnet's training arguments for ``config``: the parser's defaults, then
    the YAML (a hand-written one or the ``config.yaml`` a training run saved),
    then ``overrides``. The vocabulary comes from ``token_list``, from
    ``vocab_size`` placeholder tokens, or from the config's own
    ``token_list`` (a file, or the list a saved config holds), in that order."""
    values = read_config(config)
    parser = ASRTask.get_parser()
    known = {action.dest for action in parser._actions if action.option_strings}
    # A saved config.yaml also records bookkeeping (e.g. ``required``) that
    # the parser refuses; the parser itself must read the rest, since it
    # converts values such as ``init: none``.
    with tempfile.TemporaryDirectory() as tmp:
        options = Path(tmp) / "config.yaml"
        options.write_text(yaml.safe_dump({k: v for k, v in values.items() if k in known}))
        args = parser.parse_args(["--config", str(options)])
    vars(args).update(overrides)
    if token_list is not None:
        args.token_list = list(token_list)
    elif vocab_size is not None:
        if vocab_size < 2:
            raise ValueError(f"vocab_size={vocab_size}: need at least 2 tokens")
        args.token_list = ["<blank>", *(f"tok{i}" for i in range(vocab_size - 2)), "<sos/eos>"]
    elif isinstance(args.token_list, str):
        args.token_list = read_token_list(args.token_list)
    elif not isinstance(args.token_list, list):
        raise ValueError(
            f"{config} names no token_list: pass a token list or a vocabulary size"
        )
    return args


#: Each low-rank class's dense parent, by ESPnet choice name.
DENSE_TWINS = {"encoder": ("lowrank_conformer", "conformer"), "decoder": ("lowrank_transformer", "transformer")}


def read_config(config: Union[str, Path]) -> dict:
    """The option mapping of a training YAML (a hand-written one or a saved
    ``config.yaml``)."""
    config = Path(config)
    if not config.is_file():
        raise FileNotFoundError(f"config {config} does not exist")
    with config.open(encoding="utf-8") as stream:
        values = yaml.safe_load(stream) or {}
    if not isinstance(values, dict):
        raise ValueError(f"config {config} is not a YAML mapping of options")
    return values


def uses_low_rank(values: Mapping[str, Any]) -> bool:
    """Whether the training options build one of our low-rank classes (else the
    config is dense and has nothing to factorise)."""
    return any(values.get(part) == ours for part, (ours, _) in DENSE_TWINS.items())


def dense_twin(values: Mapping[str, Any]) -> dict:
    """The same training options with every low-rank setting off: ESPnet's
    own Conformer/Transformer in place of ours, no ``lowrank_*`` options."""
    twin = dict(values)
    for part, (ours, parent) in DENSE_TWINS.items():
        if twin.get(part) == ours:
            twin[part] = parent
        conf = twin.get(f"{part}_conf")
        if isinstance(conf, Mapping):
            twin[f"{part}_conf"] = {k: v for k, v in conf.items() if not k.startswith("lowrank_")}
    return twin


def build_model(config, token_list=None, vocab_size=None, overrides={}):
    """The ``ESPnetASRModel`` that ``asr_train`` would build from ``config``."""
    return ASRTask.build_model(config_args(config, token_list, vocab_size, overrides))


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())
