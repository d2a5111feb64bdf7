"""Checkpoints must fit the model they are loaded into, key for key.

ESPnet loads inference models with ``strict=False`` and ignores what did not
match (``AbsTask.build_model_from_file``, used by ``Speech2Text`` and
``asr_inference``): a checkpoint of another config would decode with randomly
initialised weights and no word. torch raises every message collected in
``error_msgs`` whatever ``strict`` says, so both checks here record the
mismatch there:

* :class:`CheckedStateDictLoading`, a mixin of the low-rank encoder and
  decoder: their part of the checkpoint must hold exactly their keys;
* :func:`refuse_mismatched_checkpoints`, given to every model ESPnet's ASR task
  builds once ``espnet_lowrank`` is imported: the whole checkpoint must hold
  exactly the model's keys, dense configs included.

Partial loading that ESPnet documents keeps working: ``--init_param
path:src:dst`` and ``--ignore_init_mismatch`` complete the state dict from the
model's own before loading it.
"""

from typing import Sequence

from torch import nn

#: keys named in a message, at most, per kind (a model has hundreds)
SHOWN_KEYS = 8


def _keys(kind: str, keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    more = f", ... ({len(keys)} in all)" if len(keys) > SHOWN_KEYS else ""
    return f"{kind} keys [{shown}{more}]"


def mismatch_message(what: str, missing: Sequence[str], unexpected: Sequence[str]) -> str:
    """One line naming the keys ``what`` expects but the checkpoint lacks, and those it holds but
    ``what`` has not; empty when there are none."""
    if not missing and not unexpected:
        return ""
    return (
        f"the checkpoint does not fit {what}: "
        f"{_keys('missing', sorted(missing))}; {_keys('unexpected', sorted(unexpected))}"
    )


class CheckedStateDictLoading:
    """Mixin for a module whose part of a checkpoint must match its structure exactly."""

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        expected = {prefix + name for name in self.state_dict(keep_vars=True)}
        given = {name for name in state_dict if name.startswith(prefix)}
        message = mismatch_message(
            f"this {type(self).__name__} at '{prefix}' (a dense checkpoint, or other ranks or groups?)",
            expected - given, given - expected,
        )
        if message:
            error_msgs.append(message)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def refuse_mismatched_checkpoints(model: nn.Module) -> nn.Module:
    """Make every ``load_state_dict`` of ``model`` refuse a checkpoint whose keys differ from the
    model's, ``strict=False`` too.

    torch finds the missing and unexpected keys whatever ``strict`` says (once
    the modules have adapted to the checkpoint: a guided model drops the guides
    of a finished schedule), and only ``strict`` decides whether they count;
    here they always do. A module that objected already is left to speak: its
    message is the more precise one. (A strict load then names the keys twice:
    torch's message and this one.)
    """
    loading = {}

    def remember(module, state_dict, prefix, local_metadata, strict, missing, unexpected, error_msgs):
        loading.update(prefix=prefix, error_msgs=error_msgs, objections=len(error_msgs))

    def check(module, incompatible_keys):
        prefix, error_msgs = loading.pop("prefix"), loading.pop("error_msgs")
        if len(error_msgs) > loading.pop("objections"):
            return
        def own(keys):
            return [key[len(prefix):] for key in keys if key.startswith(prefix)]

        message = mismatch_message(
            f"the {type(module).__name__} its config builds (a low-rank checkpoint with a dense "
            "config, or the other way round, or another config's?)",
            own(incompatible_keys.missing_keys), own(incompatible_keys.unexpected_keys),
        )
        if message:
            error_msgs.append(message)

    model._register_load_state_dict_pre_hook(remember, with_module=True)
    model.register_load_state_dict_post_hook(check)
    return model
