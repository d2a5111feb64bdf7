"""Make our classes choosable in ESPnet's ASR task.

espnet2 has no plugin mechanism: ``encoder_choices``/``decoder_choices`` are
module-level registries read when the argument parser is built, so we add to
them on import, before any parser exists.
"""

from espnet2.asr.decoder.abs_decoder import AbsDecoder
from espnet2.asr.encoder.abs_encoder import AbsEncoder

from espnet_lowrank.decoder import LowRankTransformerDecoder
from espnet_lowrank.encoder import LowRankConformerEncoder

ENCODERS = {"lowrank_conformer": LowRankConformerEncoder}
DECODERS = {"lowrank_transformer": LowRankTransformerDecoder}


def register() -> None:
    """Add ``lowrank_conformer`` and ``lowrank_transformer`` to ESPnet's ASR
    task (idempotent). ESPnet skips its own type check when classes are
    added this way, so it is done here."""
    from espnet2.tasks import asr

    for choices, classes, base in (
        (asr.encoder_choices, ENCODERS, AbsEncoder),
        (asr.decoder_choices, DECODERS, AbsDecoder),
    ):
        for name, cls in classes.items():
            assert name == name.lower(), "ESPnet lower-cases choice names"
            assert issubclass(cls, base), f"{cls.__name__} must derive from {base.__name__}"
            choices.classes[name] = cls
