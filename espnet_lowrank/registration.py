"""Make our classes choosable in ESPnet's ASR task, in every process, and leave dense models as stock.

espnet2 has no plugin mechanism: ``encoder_choices``/``decoder_choices`` are
module-level registries in ``espnet2.tasks.asr``, read when the argument
parser is built. :func:`register_when_espnet_loads` adds to them the moment
that module has been imported (or at once, if it already has been). The
installed package runs it at interpreter start-up (``espnet_lowrank.pth``,
docs/usage.md "Registration"), so stock ``espnet2.bin.asr_train``,
``asr_inference``, ``Speech2Text`` and ``espnet.load`` know our classes with
nothing imported by the user; ``import espnet_lowrank`` does the same.

What else registration changes applies only to a model that uses our classes
(or to every model in our own entry points, :func:`for_every_model`): our
training options and what a training gains (:mod:`espnet_lowrank.training_extras`),
checkpoints that must fit (:mod:`espnet_lowrank.strict_loading`) and audio
checks (:mod:`espnet_lowrank.speech_input`). A dense model is parsed, built,
loaded and trained as stock ESPnet does it.

Registration never breaks ESPnet: if it fails, ESPnet loads as stock and one
line on stderr says why.
"""

import sys

ASR_TASK = "espnet2.tasks.asr"

#: set by our entry points: what registration adds applies to every model they build, dense ones too
_every_model = False
_warned = False


def for_every_model() -> None:
    """This process is one of our entry points: strict loading, our training options and a training's
    extras apply to every model it builds, not only to those that use our classes."""
    global _every_model
    _every_model = True


def register() -> None:
    """Add our choices to ESPnet's ASR task and hook its parser, model builder and training worker
    (idempotent). ESPnet skips its own type check when classes are added this way, so it is done here."""
    import importlib

    from espnet2.asr.decoder.abs_decoder import AbsDecoder
    from espnet2.asr.encoder.abs_encoder import AbsEncoder
    from espnet2.tasks import asr

    from espnet_lowrank.architectures import ARCHITECTURES

    bases = {"encoder": AbsEncoder, "decoder": AbsDecoder}
    classes = {}
    for ours in ARCHITECTURES:  # everything that can fail, before any change
        cls = getattr(importlib.import_module(ours.module), ours.class_name)
        assert ours.choice == ours.choice.lower(), "ESPnet lower-cases choice names"
        assert issubclass(cls, bases[ours.part]), f"{cls.__name__} must derive from {bases[ours.part].__name__}"
        classes[ours.choice] = (getattr(asr, f"{ours.part}_choices"), cls)
    for name, (choices, cls) in classes.items():
        choices.classes[name] = cls
    task = asr.ASRTask
    for method, hooked in (("get_parser", _parser_with_ours), ("build_model", _building_ours),
                           ("main_worker", _training_ours)):
        if not getattr(getattr(task, method), "espnet_lowrank", False):
            setattr(task, method, hooked(getattr(task, method).__func__))


def uses_our_classes(values) -> bool:
    """Whether a run's options (a mapping, or ESPnet's parsed arguments) build one of our classes."""
    from espnet_lowrank.architectures import ARCHITECTURES

    values = values if isinstance(values, dict) else vars(values)
    return any(values.get(ours.part) == ours.choice for ours in ARCHITECTURES)


def _model_uses_our_classes(model) -> bool:
    return any(type(getattr(model, part, None)).__module__.startswith("espnet_lowrank.")
               for part in ("encoder", "decoder"))


def _run_uses_ours(argv) -> bool:
    """Whether an ``asr_train`` command line builds one of our classes: read from its words and its
    ``--config`` before ESPnet parses them. A config that does not read is ESPnet's to report, so it
    counts as stock."""
    import yaml

    from espnet_lowrank.command_line import command_line_value

    config, values = command_line_value(argv, "config"), {}
    if config:
        try:
            with open(config, encoding="utf-8") as stream:
                values = yaml.safe_load(stream)
        except (OSError, yaml.YAMLError):
            pass
    values = dict(values) if isinstance(values, dict) else {}
    for part in ("encoder", "decoder"):
        values[part] = command_line_value(argv, part) or values.get(part)
    return uses_our_classes(values)


def _parser_with_ours(get_parser):
    """``ASRTask.get_parser`` whose parser takes our training options in our entry points, and
    elsewhere only when the command line it parses builds one of our classes: a dense run gets ESPnet's
    parser, options and ``config.yaml`` unchanged (and our options refused, as stock ESPnet refuses them)."""

    def get_parser_with_ours(cls):
        from espnet_lowrank.training_extras import add_options

        parser = get_parser(cls)
        if _every_model:
            add_options(parser)
            return parser
        parse_known_args = parser.parse_known_args

        def parse_known_args_with_ours(args=None, namespace=None):
            if _run_uses_ours(sys.argv[1:] if args is None else list(args)):
                add_options(parser)
            return parse_known_args(args, namespace)

        parser.parse_known_args = parse_known_args_with_ours
        return parser

    get_parser_with_ours.espnet_lowrank = True
    return classmethod(get_parser_with_ours)


#: the arguments of the training that is building its model in this process
_training = None


def _building_ours(build_model):
    """``ASRTask.build_model`` whose models of our classes (every model, in our entry points) refuse
    checkpoints that do not fit them, except adapter fine-tunings (ESPnet may save their adapters alone
    and load them over the base model); ours also refuse audio they cannot recognise; a training's
    model gets our options applied."""

    def build_model_with_ours(cls, args):
        from espnet_lowrank.speech_input import guard_inputs
        from espnet_lowrank.strict_loading import refuse_mismatched_checkpoints
        from espnet_lowrank.training_extras import prepare_model

        model = build_model(cls, args)
        ours = _model_uses_our_classes(model)
        if ours:  # a dense ESPnet model may take multichannel audio: left alone
            guard_inputs(model)
        if (ours or _every_model) and not getattr(args, "use_adapter", False):
            refuse_mismatched_checkpoints(model)
        if args is _training and not getattr(args, "collect_stats", False):
            prepare_model(model, args)
        return model

    build_model_with_ours.espnet_lowrank = True
    return classmethod(build_model_with_ours)


def _training_ours(main_worker):
    """``ASRTask.main_worker`` (one training process) that gives a training of our classes (every
    training, in our entry points) what :mod:`espnet_lowrank.training_extras` adds, and ends a diverged
    one in one line."""

    def main_worker_with_ours(cls, args):
        global _training

        if not (_every_model or uses_our_classes(args)) or args.collect_stats:
            return main_worker(cls, args)
        from espnet_lowrank.divergence import TrainingDiverged
        from espnet_lowrank.training_extras import start_worker

        start_worker(args, recover=not _every_model)  # our asr_train recovers before ESPnet starts
        _training = args
        try:
            return main_worker(cls, args)
        except TrainingDiverged as error:
            raise SystemExit(f"ERROR: {error}") from None

    main_worker_with_ours.espnet_lowrank = True
    return classmethod(main_worker_with_ours)


def _warn_once(what: str, error: BaseException) -> None:
    """The one line a failed registration prints; ESPnet then runs as stock."""
    global _warned
    if not _warned:
        _warned = True
        reason = str(error).splitlines()[0] if str(error) else ""
        print(f"espnet-lowrank: {what} ({type(error).__name__}: {reason}); ESPnet runs without the low-rank "
              "classes", file=sys.stderr)


class _RegisterAfterImport:
    """A finder on ``sys.meta_path`` that runs :func:`register` right after ``espnet2.tasks.asr``
    executes, before anyone can build a parser from it; it looks at no other module."""

    def find_spec(self, name, path, target=None):
        if name != ASR_TASK:
            return None
        sys.meta_path.remove(self)  # find the real module, then stay out of the way
        try:
            import importlib.util

            spec = importlib.util.find_spec(name)
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module = _then_register(spec.loader.exec_module)
            return spec
        except Exception as error:  # the import system then finds the module as if we were not here
            _warn_once("could not hook ESPnet's ASR task", error)
            return None


def _then_register(execute):
    def execute_then_register(module):
        execute(module)
        try:
            register()
        except Exception as error:
            _warn_once("could not register with ESPnet", error)

    return execute_then_register


def register_when_espnet_loads() -> None:
    """Register now if ESPnet's ASR task is loaded, else the moment it is (idempotent)."""
    if ASR_TASK in sys.modules:
        register()
    elif not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
