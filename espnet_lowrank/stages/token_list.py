"""Stage 5: the token list ESPnet trains with: a SentencePiece model
(``bpe``/``unigram``) learnt on the training transcripts, or characters
(``char``). The list starts ``<blank> <unk>`` and ends ``<sos/eos>``, as
ESPnet's ASR task expects."""

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

import sentencepiece

from espnet_lowrank import atomic
from espnet_lowrank.kaldi_table import read_table
from espnet_lowrank.errors import one_line_errors
from espnet_lowrank.stages import StageError

SPECIALS_FIRST = ["<blank>", "<unk>"]
SPECIALS_LAST = ["<sos/eos>"]


def transcripts(text_file: Path) -> List[str]:
    lines = [line for line in read_table(text_file).values() if line.strip()]
    if not lines:
        raise StageError(f"stage 5: {text_file} has no transcripts to learn tokens from")
    return lines


def sentencepiece_tokens(text_file: Path, out_dir: Path, nbpe: int, mode: str) -> List[str]:
    """Train ``out_dir/bpe.model``; returns its pieces in id order."""
    lines = transcripts(text_file)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "train.txt"
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
        try:
            sentencepiece.SentencePieceTrainer.train(
                input=str(corpus), model_prefix=str(Path(tmp) / "bpe"), vocab_size=nbpe,
                model_type=mode, character_coverage=1.0, input_sentence_size=100_000_000,
                unk_id=0, bos_id=-1, eos_id=-1, minloglevel=2,
            )
        except RuntimeError as error:
            raise StageError(f"stage 5: --nbpe {nbpe} does not fit {text_file}: {error}") from error
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(tmp) / "bpe.model", out_dir / "bpe.model")
    model = sentencepiece.SentencePieceProcessor(model_file=str(out_dir / "bpe.model"))
    return [model.id_to_piece(i) for i in range(model.get_piece_size()) if i != model.unk_id()]


def char_tokens(text_file: Path) -> List[str]:
    chars = sorted({c for line in transcripts(text_file) for c in line})
    return ["<space>" if c == " " else c for c in chars]


def write_token_list(text_file: Path, out_dir: Path, token_type: str, nbpe: int = 0, bpemode: str = "unigram") -> Path:
    if token_type == "bpe":
        if bpemode not in ("bpe", "unigram"):
            raise StageError(f"stage 5: --bpemode {bpemode!r} is unknown; use bpe or unigram")
        tokens = sentencepiece_tokens(text_file, out_dir, nbpe, bpemode)
    elif token_type == "char":
        tokens = char_tokens(text_file)
    else:
        raise StageError(f"stage 5: --token_type {token_type!r} is unknown; use bpe or char")
    target = out_dir / "tokens.txt"
    atomic.write_text(target, "\n".join(SPECIALS_FIRST + tokens + SPECIALS_LAST) + "\n")
    return target


@one_line_errors
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, required=True, help="the training set's text file")
    parser.add_argument("--out_dir", type=Path, required=True)
    parser.add_argument("--token_type", default="bpe", choices=["bpe", "char"])
    parser.add_argument("--nbpe", type=int, default=5000)
    parser.add_argument("--bpemode", default="unigram")
    args = parser.parse_args(argv)
    path = write_token_list(args.text, args.out_dir, args.token_type, args.nbpe, args.bpemode)
    print(f"stage 5: wrote {path}")


if __name__ == "__main__":
    main()
