"""Stock ESPnet in a fresh interpreter, as someone who never read our README runs it: the code imports
nothing of ours, so only the installed package's start-up hook can have registered our classes."""

import json
import os
import subprocess
import sys
from pathlib import Path

#: Speech2Text.from_pretrained and espnet.load (espnet 202611's one-line loader; 202511 has none) on a pack
DECODE_PACK = """
import json, sys
import espnet, soundfile
from espnet2.bin.asr_inference import Speech2Text
pack, wav = sys.argv[1:]
audio, _ = soundfile.read(wav, dtype="float32")
options = dict(device="cpu", beam_size=2, ctc_weight=0.3, nbest=1)
texts = {"from_pretrained": Speech2Text.from_pretrained(pack, **options)(audio)[0][0]}
if hasattr(espnet, "load"):
    texts["espnet.load"] = espnet.load(pack, task="asr", **options)(audio)[0][0]
texts["plugin_imported_by_the_hook"] = "espnet_lowrank" in sys.modules
print(json.dumps(texts))
"""


def run_stock(command, home: Path, env: dict = {}) -> subprocess.CompletedProcess:
    """``command`` from ``/`` (no copy of our package on the path), with its model cache under ``home``."""
    return subprocess.run(command, capture_output=True, text=True, cwd="/",
                          env={**os.environ, "HOME": str(home), **env})


def decode_pack(pack: Path, wav: Path, home: Path, python: str = sys.executable) -> dict:
    """The 1-best texts ``from_pretrained`` and ``espnet.load`` give for ``wav`` from ``pack``."""
    result = run_stock([python, "-c", DECODE_PACK, str(pack), str(wav)], home)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])
