"""``python -m espnet_lowrank.bin.asr_inference``: ESPnet's ``asr_inference``,
every model it loads refusing a checkpoint that does not fit (dense ones too);
every option is ESPnet's own. Audio the model cannot recognise (no samples,
several channels, another sample rate than its frontend's, broken or NaN
samples) stops it in one line naming the utterance, before the model loads."""

import sys
from pathlib import Path
from typing import Sequence

import torch
import yaml
from espnet2.bin.asr_inference import main

from espnet_lowrank import registration
from espnet_lowrank.command_line import command_line_values
from espnet_lowrank.errors import InputError
from espnet_lowrank.speech_input import check_audio_files

registration.for_every_model()  # a dense config with a low-rank checkpoint is refused here too
registration.register()


def check_inputs(argv: Sequence[str]) -> None:
    """Every sound file the command decodes, whole, against the model's frontend rate."""
    import humanfriendly

    configs = command_line_values(argv, "asr_train_config")
    if not configs or not Path(configs[-1]).is_file():
        return  # ESPnet names what is missing
    frontend = (yaml.safe_load(Path(configs[-1]).read_text()) or {}).get("frontend_conf") or {}
    rate = frontend.get("fs", 16000)
    rate = humanfriendly.parse_size(rate) if isinstance(rate, str) else int(rate)
    for value in command_line_values(argv, "data_path_and_name_and_type"):
        path, _, kind = value.rsplit(",", 2) if value.count(",") >= 2 else (value, "", "")
        if kind == "sound":
            check_audio_files(Path(path), rate)


if __name__ == "__main__":
    # parallel jobs divide the cores among them (espnet_lowrank.threads): the log says what this one got
    print(f"asr_inference: {torch.get_num_threads()} torch thread(s)", file=sys.stderr, flush=True)
    try:
        check_inputs(sys.argv[1:])
        main()
    except InputError as error:  # a bad wav.scp or audio file
        sys.exit(f"ERROR: {error}")
