"""LibriSpeech: download parts from openslr (resource 12) and prepare them as
Kaldi-style data dirs pointing at the original flac files.

    python -m espnet_lowrank.data.librispeech download --dest downloads dev-clean test-clean
    python -m espnet_lowrank.data.librispeech prepare --root downloads/LibriSpeech --part dev-clean --out data/dev_clean

The embedded corpus is written in the same layout, so the same ``prepare``
reads it.
"""

import argparse
import hashlib
import logging
import tarfile
import urllib.request
from pathlib import Path
from typing import Iterator, Optional, Sequence

from tqdm import tqdm

from espnet_lowrank.data.kaldi_dir import Utterance, write_data_dir
from espnet_lowrank.errors import InputError, one_line_errors

BASE_URL = "https://www.openslr.org/resources/12"
#: md5 of each archive, as openslr publishes them (resources/12/md5sum.txt).
PART_MD5 = {
    "dev-clean": "42e2234ba48799c1f50f24a7926300a1",
    "dev-other": "c8d0bcc9cca99d4f8b62fcc847357931",
    "test-clean": "32fa31d27d2e1cad72775fee3f4849a9",
    "test-other": "fb5a50374b501bb3bac4815ee91d3135",
    "train-clean-100": "2a93770f6d5c6c964bc36631d331a522",
    "train-clean-360": "c0e676e450a7ff2f54aeade5171606fa",
    "train-other-500": "d1a0fd59409feb2c614ce4d30c387708",
}
CHUNK = 1 << 20


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract_data(tar: tarfile.TarFile, dest: Path, archive: Path) -> None:
    """Unpack plain files and dirs inside ``dest`` only (tarfile's "data" filter, which Python 3.11
    before 3.11.4 lacks: there the same rule is checked here)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = dest.resolve()
    for member in tar.getmembers():
        inside = (root / member.name).resolve()
        if not (member.isfile() or member.isdir()) or (inside != root and root not in inside.parents):
            raise InputError(f"{archive}: refusing to unpack {member.name!r} (not a plain file inside {dest})")
    tar.extractall(dest)


def fetch(url: str, target: Path, md5: str) -> Path:
    """Download ``url`` to ``target``, resuming a ``.part`` file left by an
    interrupted run, and keep it only if its md5 matches."""
    target = Path(target)
    if target.exists() and md5_of(target) == md5:
        return target
    partial = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        if offset and response.status != 206:  # server ignored the range: start over
            offset = 0
        total = response.headers.get("Content-Length")
        total = int(total) + offset if total is not None else None
        with partial.open("ab" if offset else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=target.name
        ) as bar:
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                bar.update(len(block))
    got = md5_of(partial)
    if got != md5:
        partial.unlink()
        raise InputError(
            f"{url}: md5 {got} does not match the published {md5}; the partial file was "
            "removed, run again to download afresh"
        )
    partial.rename(target)
    return target


def download_part(part: str, dest: Path, base_url: str = BASE_URL) -> Path:
    """Fetch and unpack one LibriSpeech part into ``dest/LibriSpeech/<part>``
    (skipped when a marker says it was done); returns the LibriSpeech root."""
    if part not in PART_MD5:
        raise InputError(f"LibriSpeech part {part!r} is unknown; choose from {', '.join(PART_MD5)}")
    dest = Path(dest)
    marker = dest / "LibriSpeech" / f".{part}.complete"
    if marker.exists():
        logging.info("%s is already downloaded and unpacked", part)
        return dest / "LibriSpeech"
    archive = fetch(f"{base_url}/{part}.tar.gz", dest / f"{part}.tar.gz", PART_MD5[part])
    logging.info("unpacking %s", archive)
    with tarfile.open(archive) as tar:
        _extract_data(tar, dest, archive)
    if not (dest / "LibriSpeech" / part).is_dir():
        raise InputError(f"{archive} did not contain LibriSpeech/{part}/")
    marker.touch()
    return dest / "LibriSpeech"


def iter_part(root: Path, part: str) -> Iterator[Utterance]:
    """Utterances of ``root/<part>/<speaker>/<chapter>/*.trans.txt``."""
    part_dir = Path(root) / part
    if not part_dir.is_dir():
        raise InputError(f"{part_dir} does not exist: is {root} a LibriSpeech root?")
    transcripts = sorted(part_dir.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise InputError(f"{part_dir} holds no <speaker>/<chapter>/*.trans.txt files")
    for trans in transcripts:
        speaker = trans.parent.parent.name
        for number, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            utt_id, _, text = line.partition(" ")
            audio = trans.parent / f"{utt_id}.flac"
            if not audio.is_file():
                raise InputError(f"{trans}:{number}: utterance {utt_id} has no audio {audio}")
            if not text.strip():
                raise InputError(f"{trans}:{number}: utterance {utt_id} has an empty transcript")
            yield Utterance(utt_id, speaker, str(audio.resolve()), text.strip())


def prepare_part(root: Path, part: str, out_dir: Path) -> int:
    """Write the Kaldi data dir of one part; returns its utterance count."""
    return write_data_dir(out_dir, iter_part(root, part))


@one_line_errors
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Download or prepare LibriSpeech parts.")
    sub = parser.add_subparsers(dest="command", required=True)
    down = sub.add_parser("download", help="fetch, verify and unpack parts")
    down.add_argument("parts", nargs="+")
    down.add_argument("--dest", type=Path, required=True)
    down.add_argument("--base_url", default=BASE_URL)
    prep = sub.add_parser("prepare", help="write a Kaldi data dir for one part")
    prep.add_argument("--root", type=Path, required=True, help="the LibriSpeech directory")
    prep.add_argument("--part", required=True)
    prep.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "download":
        for part in args.parts:
            download_part(part, args.dest, args.base_url)
    else:
        count = prepare_part(args.root, args.part, args.out)
        logging.info("wrote %d utterances to %s", count, args.out)


if __name__ == "__main__":
    main()
