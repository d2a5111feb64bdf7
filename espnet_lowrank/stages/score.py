"""Stage 13: word and character error rates of decoded test sets (jiwer),
written as an ESPnet-style RESULTS.md."""

import argparse
import datetime
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import jiwer

from espnet_lowrank import atomic
from espnet_lowrank import machine
from espnet_lowrank.kaldi_table import read_table
from espnet_lowrank.errors import one_line_errors
from espnet_lowrank.stages import StageError


@dataclass
class Score:
    sentences: int
    words: int
    correct: int
    substitutions: int
    deletions: int
    insertions: int
    sentence_errors: int

    @property
    def error_rate(self) -> float:
        return 100.0 * (self.substitutions + self.deletions + self.insertions) / max(self.words, 1)

    def row(self, name: str) -> str:
        def pct(n: int) -> str:
            return f"{100.0 * n / max(self.words, 1):.1f}"

        return (
            f"|{name}|{self.sentences}|{self.words}|{pct(self.correct)}|{pct(self.substitutions)}|"
            f"{pct(self.deletions)}|{pct(self.insertions)}|{self.error_rate:.1f}|"
            f"{100.0 * self.sentence_errors / max(self.sentences, 1):.1f}|"
        )


def score(reference: List[str], hypothesis: List[str], unit: str) -> Score:
    """Alignment counts with ``unit`` = ``word`` or ``char`` (spaces count
    as characters neither way)."""
    if unit == "char":
        reference = [" ".join(r.replace(" ", "")) for r in reference]
        hypothesis = [" ".join(h.replace(" ", "")) for h in hypothesis]
    out = jiwer.process_words(reference, hypothesis)
    errors = sum(
        1 for r, h in zip(reference, hypothesis) if r.split() != h.split()
    )
    return Score(
        sentences=len(reference), words=sum(len(r.split()) for r in reference),
        correct=out.hits, substitutions=out.substitutions, deletions=out.deletions,
        insertions=out.insertions, sentence_errors=errors,
    )


def score_set(ref_text: Path, hyp_text: Path) -> Dict[str, Score]:
    references = read_table(ref_text)
    hypotheses = read_table(hyp_text)
    missing = sorted(set(references) - set(hypotheses))
    if missing:
        raise StageError(
            f"stage 13: {hyp_text} has no hypothesis for {len(missing)} utterances of "
            f"{ref_text}, e.g. {missing[0]}: did stage 12 finish?"
        )
    empty = [utt for utt, text in references.items() if not text.strip()]
    if empty:
        raise StageError(f"stage 13: {ref_text}: utterance {empty[0]} has an empty reference")
    keys = sorted(references)
    ref = [references[k].strip() for k in keys]
    hyp = [hypotheses[k].strip() for k in keys]
    return {"WER": score(ref, hyp, "word"), "CER": score(ref, hyp, "char")}


def results_markdown(title: str, decode_dir: str, model: str, inference_config: str,
                     scores: Dict[str, Dict[str, Score]]) -> str:
    """ESPnet's RESULTS.md layout: the environment, then the decode (its dir, the model and the
    decoding config, each named once) and a row per test set."""
    lines = [
        f"# {title}",
        "## Environments",
        f"- date: `{datetime.datetime.now().strftime('%a %b %d %H:%M:%S %Y')}`",
        f"- python version: `{platform.python_version()}`",
        f"- machine: `{machine.describe()}`",
        "",
        f"## {decode_dir}",
        f"- model: `{model}`",
        f"- decoding config: `{inference_config}`",
        "",
    ]
    for metric in ("WER", "CER"):
        lines += [
            f"### {metric}", "",
            "|test set|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [by_metric[metric].row(name) for name, by_metric in scores.items()]
        lines.append("")
    return "\n".join(lines)


def scored_decode_dir(results: Path, test_set: str) -> Path:
    """The decode dir whose ``test_set`` hypotheses ``results`` (a RESULTS.md) scores. An exp dir
    decoded more than once (another inference config, another model) holds several; RESULTS.md names
    the one stage 13 scored last, which file dates cannot tell (stage 12 skips a finished decode)."""
    if not results.is_file():
        raise StageError(f"{results} does not exist: did stage 13 run?")
    text = results.read_text()
    decode = re.search(r"^## (decode\S*)$", text, flags=re.M)
    if decode is None or not re.search(rf"^\|{re.escape(test_set)}\|", text, flags=re.M):
        raise StageError(f"{results} scores no decode of test set {test_set!r}: did stage 13 run on it?")
    return results.parent / decode.group(1)


@one_line_errors
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decode_dir", type=Path, required=True,
                        help="holds <test_set>/text, the merged hypotheses")
    parser.add_argument("--data_root", type=Path, required=True,
                        help="holds <test_set>/text, the references")
    parser.add_argument("--test_sets", nargs="+", required=True)
    parser.add_argument("--title", default="RESULTS")
    parser.add_argument("--model", default="valid.acc.ave.pth", help="the decoded model, to name it")
    parser.add_argument("--inference_config", default="(ESPnet's defaults)", help="the decoding config, to name it")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    scores = {
        name: score_set(args.data_root / name / "text", args.decode_dir / name / "text")
        for name in args.test_sets
    }
    text = results_markdown(args.title, args.decode_dir.name, args.model, args.inference_config, scores)
    atomic.write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
