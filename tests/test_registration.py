"""``import espnet_lowrank`` registers our classes whichever is imported first."""

import subprocess
import sys

import pytest

CHECK = """
import sys
{first}
from espnet2.tasks.asr import ASRTask, decoder_choices, encoder_choices
assert encoder_choices.get_class("lowrank_conformer").__name__ == "LowRankConformerEncoder"
assert decoder_choices.get_class("lowrank_transformer").__name__ == "LowRankTransformerDecoder"
args = ASRTask.get_parser().parse_args(["--encoder", "lowrank_conformer", "--decoder", "lowrank_transformer"])
print("ok")
"""


@pytest.mark.parametrize(
    "first",
    [
        "import espnet_lowrank\nassert 'espnet2.tasks.asr' not in sys.modules",
        "import espnet2.tasks.asr\nimport espnet_lowrank",
        "import espnet_lowrank\nfrom espnet2.bin.asr_inference import Speech2Text",
    ],
    ids=["ours-first-and-cheap", "espnet-first", "speech2text"],
)
def test_registration_in_a_fresh_interpreter(first):
    result = subprocess.run(
        [sys.executable, "-c", CHECK.format(first=first)], capture_output=True, text=True
    )
    # espnet 202511 prints a notice on stdout first: the check's own line is the last
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "ok", result.stderr[-2000:]


def test_without_our_import_espnet_does_not_know_the_names():
    """The check above can fail: plain ESPnet refuses the names."""
    result = subprocess.run(
        [sys.executable, "-c", "from espnet2.tasks.asr import ASRTask\n"
         "ASRTask.get_parser().parse_args(['--encoder', 'lowrank_conformer'])"],
        capture_output=True, text=True,
    )
    assert result.returncode != 0 and "lowrank_conformer" in result.stderr
