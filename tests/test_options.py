"""The ``lowrank_*`` options are read and checked in one place for all three classes: a bad key or
value in any YAML group is refused naming its key, before ESPnet's parent builds anything."""

import pytest

from espnet_lowrank.decoder import LowRankTransformerDecoder
from espnet_lowrank.e_branchformer import LowRankEBranchformerEncoder
from espnet_lowrank.encoder import LowRankConformerEncoder
from espnet_lowrank.errors import InputError

CLASSES = {
    "conformer": (LowRankConformerEncoder, "encoder_conf", "attention",
                  dict(input_size=20, output_size=32, attention_heads=2, linear_units=64, num_blocks=2)),
    "e_branchformer": (LowRankEBranchformerEncoder, "encoder_conf", "cgmlp",
                       dict(input_size=20, output_size=32, attention_heads=2, cgmlp_linear_units=64, num_blocks=2)),
    "transformer": (LowRankTransformerDecoder, "decoder_conf", "src_attention",
                    dict(vocab_size=20, encoder_output_size=32, attention_heads=2, linear_units=64, num_blocks=2)),
}

BAD = [
    ("GROUP", {"mapping": "constant", "ratio": 0.5, "rato": 1}, r"lowrank_GROUP\.rato is not an option of the 'constant'"),
    ("GROUP", {"mapping": "cubic"}, r"lowrank_GROUP\.mapping='cubic' is unknown"),
    ("init", "orthogonal", r"lowrank_init='orthogonal' is unknown; choose one of svd, random"),
    ("dense_init", "glorot", r"lowrank_dense_init='glorot' is unknown"),
    ("guide", {"steps": 10, "shape": "cosine"}, r"lowrank_guide\.shape is not an option of the guide"),
    ("frobenius_decay", -1.0, r"lowrank_frobenius_decay=-1\.0: must be a number ≥ 0"),
    ("lr_scale", 0.0, r"lowrank_lr_scale=0\.0: must be a number > 0"),
]


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("option, value, message", BAD, ids=[option + str(i) for i, (option, _, _) in enumerate(BAD)])
def test_a_bad_option_is_refused_by_its_key_before_the_parent_builds(name, option, value, message, monkeypatch):
    cls, conf, group, arguments = CLASSES[name]
    parent = next(base for base in cls.__mro__ if base.__module__.startswith("espnet2."))  # the class we extend
    built = []
    monkeypatch.setattr(parent, "__init__", lambda self, *args, **kwargs: built.append(True))
    option = option.replace("GROUP", group)
    with pytest.raises(InputError, match=f"^{conf}\\.{message.replace('GROUP', group)}"):
        cls(**arguments, **{f"lowrank_{option}": value})
    assert not built


@pytest.mark.parametrize("name", CLASSES)
def test_every_class_applies_its_options_the_same_way(name):
    cls, conf, group, arguments = CLASSES[name]
    module = cls(**arguments, **{f"lowrank_{group}": {"mapping": "constant", "ratio": 0.5}},
                 lowrank_guide={"steps": 4}, lowrank_frobenius_decay=1e-3, lowrank_lr_scale=2.0)
    assert module.lowrank_ranks and module.lowrank_guide is not None
    assert all(name.split(".")[0] in ("0", "1") for name in module.lowrank_ranks)
