"""Build an ESPnet ASR model from a training YAML, the way ``asr_train`` does.

Used by the tools (report, bench) and the tests, so that every count they give
is the count of the model ESPnet itself builds from that file.
"""

import argparse
import contextlib
import difflib
import inspect
import sys
import tempfile
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Union

import yaml

import espnet_lowrank  # noqa: F401  (registers the low-rank classes)

from espnet_lowrank.architectures import ARCHITECTURES
from espnet_lowrank.errors import InputError


def asr_task():
    """ESPnet's ASR task, imported on first use: the pure helpers below (read by
    light processes such as stage 11's progress line) do not need it.
    espnet 202511 prints a flash-attention notice on stdout while importing
    it; stdout stays clean for the tools' --json output."""
    with contextlib.redirect_stdout(sys.stderr):
        from espnet2.tasks.asr import ASRTask
    return ASRTask


def training_parser() -> argparse.ArgumentParser:
    """ESPnet's ASR training parser with our training options, which every config of ours may set."""
    from espnet_lowrank.training_extras import add_options

    parser = asr_task().get_parser()
    add_options(parser)
    return parser


def read_token_list(path: Union[str, Path]) -> List[str]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"token list {path} does not exist")
    return [line.rstrip("\n") for line in path.open(encoding="utf-8")]


def config_args(
    config: Union[str, Path, Mapping[str, Any]],
    token_list: Optional[Sequence[str]] = None,
    vocab_size: Optional[int] = None,
    overrides: Mapping[str, Any] = {},
    where: Optional[str] = None,
) -> argparse.Namespace:
    """ESPnet's training arguments for ``config``: the parser's defaults, then
    the YAML (a hand-written one or the ``config.yaml`` a training run saved),
    then ``overrides``. The vocabulary comes from ``token_list``, from
    ``vocab_size`` placeholder tokens, or from the config's own
    ``token_list`` (a file, or the list a saved config holds), in that order. ``config`` may also be
    the options themselves, as :func:`read_config` gives them; errors name ``where`` they came from."""
    values = read_config(config)
    config = where or config
    parser = training_parser()
    known = {action.dest for action in parser._actions if action.option_strings}
    # A saved config.yaml also records bookkeeping the parser refuses as
    # options (its defaults such as ``required``, and what ESPnet's main adds);
    # anything else unknown is a typo that asr_train would refuse too.
    for key in values:
        if key not in known and key not in parser._defaults and key not in SAVED_BY_ESPNET:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            raise InputError(f"config {config}: unknown option {key!r}"
                             + (f" (did you mean {close[0]!r}?)" if close else "") + "; asr_train refuses it too")
    check_part_options(config, values)
    # The parser itself must read the rest, since it converts values such as ``init: none``.
    with tempfile.TemporaryDirectory() as tmp:
        options = Path(tmp) / "config.yaml"
        options.write_text(yaml.safe_dump({k: v for k, v in values.items() if k in known}))
        args = parser.parse_args(["--config", str(options)])
    vars(args).update(overrides)
    if token_list is not None:
        args.token_list = list(token_list)
    elif vocab_size is not None:
        if vocab_size < 2:
            raise InputError(f"vocab_size={vocab_size}: need at least 2 tokens")
        args.token_list = ["<blank>", *(f"tok{i}" for i in range(vocab_size - 2)), "<sos/eos>"]
    elif isinstance(args.token_list, str):
        args.token_list = read_token_list(args.token_list)
    elif not isinstance(args.token_list, list):
        raise InputError(
            f"{config} names no token_list: pass a token list or a vocabulary size"
        )
    return args


def appended_options() -> frozenset:
    """Options that ESPnet *appends* to a config's values rather than replacing them (argparse's
    append action starts from the defaults the config set): data and shape files, fold lengths. run.sh
    passes them itself, so a config that sets them too (a saved ``config.yaml``) would train on its
    data twice."""
    parser = training_parser()
    return frozenset(action.dest for action in parser._actions if isinstance(action, argparse._AppendAction))


def training_options(values: Mapping[str, Any]) -> dict:
    """A config's options as a training YAML may give them: the saved bookkeeping asr_train refuses
    from a file (``required``, ``version``) and the options it appends to (:func:`appended_options`)
    left out."""
    parser = training_parser()
    known = {action.dest for action in parser._actions if action.option_strings} - appended_options()
    return {key: value for key, value in values.items() if key in known}


#: Keys ESPnet's ``AbsTask.main`` adds to the ``config.yaml`` it saves, which are not options.
SAVED_BY_ESPNET = frozenset({"version", "distributed"})

def read_config(config: Union[str, Path, Mapping[str, Any]]) -> dict:
    """The option mapping of a training YAML (a hand-written one or a saved
    ``config.yaml``); a copy, given the mapping itself."""
    if isinstance(config, Mapping):
        return dict(config)
    config = Path(config)
    if not config.is_file():
        raise InputError(f"config {config} does not exist")
    with config.open(encoding="utf-8") as stream:
        values = yaml.safe_load(stream) or {}
    if not isinstance(values, dict):
        raise InputError(f"config {config} is not a YAML mapping of options")
    return values


def uses_low_rank(values: Mapping[str, Any]) -> bool:
    """Whether the training options build one of our low-rank classes (else the
    config is dense and has nothing to factorise)."""
    return any(values.get(ours.part) == ours.choice for ours in ARCHITECTURES)


def dense_twin(values: Mapping[str, Any]) -> dict:
    """The same training options with every low-rank setting off: ESPnet's
    own Conformer/Transformer in place of ours, no ``lowrank_*`` options."""
    twin = dict(values)
    for ours in ARCHITECTURES:
        if twin.get(ours.part) == ours.choice:
            twin[ours.part] = ours.dense_choice
    for part in ("encoder", "decoder"):
        conf = twin.get(f"{part}_conf")
        if isinstance(conf, Mapping):
            twin[f"{part}_conf"] = {k: v for k, v in conf.items() if not k.startswith("lowrank_")}
    return twin


def check_part_options(config, values: Mapping[str, Any]) -> None:
    """``encoder_conf``/``decoder_conf`` keys the chosen class does not take:
    one line naming the key and the class's valid ``lowrank_*`` options (or the
    closest option), instead of the constructor's bare ``TypeError``."""
    from espnet2.tasks import asr

    for part, choices in (("encoder", asr.encoder_choices), ("decoder", asr.decoder_choices)):
        name, conf = values.get(part), values.get(f"{part}_conf")
        if not isinstance(name, str) or not isinstance(conf, Mapping):
            continue
        try:
            cls = choices.get_class(name)
        except ValueError as error:
            raise InputError(f"config {config}: {part}: {error}") from None
        parameters = inspect.signature(cls.__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            continue  # the class takes any keyword
        accepted = [p for p in parameters if p not in ("self", "input_size")]
        for key in conf:
            if key in accepted:
                continue
            ours = [p for p in accepted if p.startswith("lowrank_")]
            if key.startswith("lowrank_") and ours:
                hint = f"{name}'s low-rank options are {', '.join(ours)}"
            elif key.startswith("lowrank_"):
                twins = [ours.choice for ours in ARCHITECTURES if ours.part == part and ours.dense_choice == name]
                hint = f"{name} is dense: use {twins[0] if twins else 'one of ours'} for low-rank options"
            else:
                close = difflib.get_close_matches(key, accepted, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"{name} takes {', '.join(accepted)}"
            raise InputError(f"config {config}: {part}_conf.{key} is not an option of {part} {name!r}; {hint}")


def build_model(config, token_list=None, vocab_size=None, overrides={}, where=None):
    """The ``ESPnetASRModel`` that ``asr_train`` would build from ``config`` (see :func:`config_args`)."""
    return asr_task().build_model(config_args(config, token_list, vocab_size, overrides, where))


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_training_config(config: Path, token_list: Path) -> int:
    """Build the model of a training YAML once, before a long job starts: a bad option, group or rank
    stops here in one line, and ranks above break-even are warned about. Returns its parameters."""
    appended = sorted(appended_options() & set(read_config(config)))
    if appended:
        raise InputError(f"config {config} sets {', '.join(appended)}, which run.sh passes itself and ESPnet "
                         "would add to, not replace (a saved config.yaml?): remove them")
    return count_parameters(build_model(config, token_list=read_token_list(token_list)))
