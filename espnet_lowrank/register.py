"""Make our classes choosable in ESPnet's ASR task.

espnet2 has no plugin mechanism: ``encoder_choices``/``decoder_choices`` are
module-level registries in ``espnet2.tasks.asr``, read when the argument
parser is built. We add to them the moment that module has been imported (or
at once, if it already has been), so ``import espnet_lowrank`` stays cheap for
the pipeline's data stages, which never touch ESPnet's task.
"""

import importlib.abc
import importlib.util
import sys

ASR_TASK = "espnet2.tasks.asr"
#: training options our ``asr_train`` adds to ESPnet's (a stock ESPnet parser refuses them)
TRAINING_OPTIONS = ("compile", "lowrank_recompute", "stop_after_nonfinite_steps")


def register() -> None:
    """Add ``lowrank_conformer``, ``lowrank_e_branchformer`` and
    ``lowrank_transformer`` to ESPnet's ASR task, and make the models it builds refuse checkpoints that do not fit
    them (idempotent). ESPnet skips its own type check when classes are
    added this way, so it is done here."""
    from espnet2.asr.decoder.abs_decoder import AbsDecoder
    from espnet2.asr.encoder.abs_encoder import AbsEncoder
    from espnet2.tasks import asr

    from espnet_lowrank.decoder import LowRankTransformerDecoder
    from espnet_lowrank.e_branchformer import LowRankEBranchformerEncoder
    from espnet_lowrank.encoder import LowRankConformerEncoder

    for choices, name, cls, base in (
        (asr.encoder_choices, "lowrank_conformer", LowRankConformerEncoder, AbsEncoder),
        (asr.encoder_choices, "lowrank_e_branchformer", LowRankEBranchformerEncoder, AbsEncoder),
        (asr.decoder_choices, "lowrank_transformer", LowRankTransformerDecoder, AbsDecoder),
    ):
        assert name == name.lower(), "ESPnet lower-cases choice names"
        assert issubclass(cls, base), f"{cls.__name__} must derive from {base.__name__}"
        choices.classes[name] = cls
    if not getattr(asr.ASRTask.build_model, "checks_checkpoints", False):
        asr.ASRTask.build_model = _checking_checkpoints(asr.ASRTask.build_model.__func__)
    if not getattr(asr.ASRTask.add_task_arguments, "adds_ours", False):
        asr.ASRTask.add_task_arguments = _adding_our_options(asr.ASRTask.add_task_arguments.__func__)


def _checking_checkpoints(build_model):
    """``ASRTask.build_model`` whose models refuse mismatched checkpoints (see
    :mod:`espnet_lowrank.strict_loading`), except adapter fine-tunings: ESPnet
    may save their adapters alone and load them over the base model; ours also
    refuse audio they cannot recognise (:mod:`espnet_lowrank.speech_input`)."""
    from espnet_lowrank.speech_input import guard_inputs
    from espnet_lowrank.strict_loading import refuse_mismatched_checkpoints

    def build_checked_model(cls, args):
        model = build_model(cls, args)
        if _uses_our_classes(model):  # a dense ESPnet model may take multichannel audio: left alone
            guard_inputs(model)
        return model if getattr(args, "use_adapter", False) else refuse_mismatched_checkpoints(model)

    build_checked_model.checks_checkpoints = True
    return classmethod(build_checked_model)


def _uses_our_classes(model) -> bool:
    return any(type(getattr(model, part, None)).__module__.startswith("espnet_lowrank.")
               for part in ("encoder", "decoder"))


def _adding_our_options(add_task_arguments):
    """``ASRTask.add_task_arguments`` that also adds the training options of
    :mod:`espnet_lowrank.bin.asr_train`. Every parser knows them, so a config
    that sets them passes ESPnet's checks; only our training entry point acts
    on them (decoding a compiled run's model does not compile)."""
    from espnet2.utils.types import str2bool

    from espnet_lowrank.divergence import DEFAULT_LIMIT

    def add_with_ours(cls, parser):
        add_task_arguments(cls, parser)
        group = parser.add_argument_group("espnet-lowrank training")
        group.add_argument("--compile", type=str2bool, default=False,
                           help="torch.compile every encoder and decoder block (dynamic shapes); "
                                "checkpoints keep their keys")
        group.add_argument("--lowrank_recompute", type=str2bool, default=False,
                           help="factorised layers keep only their input for the backward pass and "
                                "recompute V·x there: no more activation memory than dense")
        group.add_argument("--stop_after_nonfinite_steps", type=int, default=DEFAULT_LIMIT,
                           help="end the training, naming the last good checkpoint, after this many training "
                                "steps in a row with a non-finite loss (0: never)")

    add_with_ours.adds_ours = True
    return classmethod(add_with_ours)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Runs :func:`register` right after ``espnet2.tasks.asr`` executes,
    before anyone can build a parser from it."""

    def find_spec(self, name, path, target=None):
        if name != ASR_TASK:
            return None
        sys.meta_path.remove(self)  # find the real module, then stay out of the way
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            execute = spec.loader.exec_module

            def execute_then_register(module):
                execute(module)
                register()

            spec.loader.exec_module = execute_then_register
        return spec


def register_when_espnet_loads() -> None:
    if ASR_TASK in sys.modules:
        register()
    elif not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
