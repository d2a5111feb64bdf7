"""A tiny ESPnet data dir written by the tests: a few seconds of tones and
their 'transcripts', enough for ESPnet's trainer to take real steps."""

from pathlib import Path

import numpy as np
import soundfile

WORDS = ["low rank", "full rank", "no more", "speech"]


def write_tiny_data(root: Path, count: int = 6, rate: int = 16000) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    wav_scp, text, shapes = [], [], []
    for index in range(count):
        utt = f"utt{index:02d}"
        seconds = 0.6 + 0.1 * index
        t = np.arange(int(seconds * rate)) / rate
        audio = 0.3 * np.sin(2 * np.pi * (200 + 60 * index) * t) + 0.01 * rng.standard_normal(t.size)
        path = root / f"{utt}.wav"
        soundfile.write(path, audio.astype(np.float32), rate)
        wav_scp.append(f"{utt} {path}")
        text.append(f"{utt} {WORDS[index % len(WORDS)]}")
        shapes.append(f"{utt} {t.size}")
    (root / "wav.scp").write_text("\n".join(wav_scp) + "\n")
    (root / "text").write_text("\n".join(text) + "\n")
    (root / "speech_shape").write_text("\n".join(shapes) + "\n")
    chars = sorted({c for words in WORDS for c in words.replace(" ", "")})
    tokens = ["<blank>", "<unk>", "<space>", *chars, "<sos/eos>"]
    (root / "tokens.txt").write_text("\n".join(tokens) + "\n")
    return {"dir": root, "tokens": root / "tokens.txt", "wav": root / "utt00.wav"}


def train_command(python: str, config: Path, data: dict, output_dir: Path,
                  module: str = "espnet_lowrank.bin.asr_train") -> list:
    """An ``asr_train`` command (ours, or stock ESPnet's ``espnet2.bin.asr_train``) for one epoch on ``data``."""
    d = data["dir"]
    return [
        python, "-m", module,
        "--config", str(config), "--output_dir", str(output_dir),
        "--token_type", "char", "--token_list", str(data["tokens"]),
        "--train_data_path_and_name_and_type", f"{d}/wav.scp,speech,sound",
        "--train_data_path_and_name_and_type", f"{d}/text,text,text",
        "--valid_data_path_and_name_and_type", f"{d}/wav.scp,speech,sound",
        "--valid_data_path_and_name_and_type", f"{d}/text,text,text",
        "--train_shape_file", f"{d}/speech_shape", "--valid_shape_file", f"{d}/speech_shape",
        "--batch_type", "unsorted", "--batch_size", "2", "--max_epoch", "1",
        "--ngpu", "0", "--num_workers", "0", "--use_matplotlib", "false",
        "--num_att_plot", "0", "--seed", "0",
    ]
