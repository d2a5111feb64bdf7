"""Stage markers that remember what a stage was made from, so that run.sh never
reuses stale work quietly.

    python -m espnet_lowrank.stages.marker check  MARKER --stage 5 --on_change redo \\
        --option nbpe=40 --input dump/raw/train/text
    python -m espnet_lowrank.stages.marker record MARKER [--started] --option nbpe=40 --input ...

A marker (``.done``, ``.stage1.embedded.done``, ...) is a small JSON file:
the stage's options and a fingerprint of each input file or directory (the
SHA-1 of each file; a directory is its non-hidden files, not its
sub-directories, and for a data dir the size and modification time of each
audio file its wav.scp names). ``record --started`` writes the same record as
``.started`` beside it, for a stage that resumes (training): its inputs are
checked before it goes on.
``check`` exits 0 when the stage finished with the same options and inputs
(run.sh skips it), 3 when the stage must run (no marker yet, a run that
started with these inputs and did not finish, or, with ``--on_change redo``,
changed inputs, saying what changed), and 1 with one line saying what changed
and ``--hint`` when work that is too costly to redo silently (training) was
made from something else.
"""

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from espnet_lowrank import atomic
from espnet_lowrank.errors import one_line_errors
from espnet_lowrank.stages import StageError

SKIP, RUN = 0, 3
#: Files larger than this are fingerprinted by size and modification time.
HASH_LIMIT = 1 << 30


#: A data dir's fingerprint also covers the audio its wav.scp names, under this key.
AUDIO = "audio wav.scp names"


def fingerprint(path: Path) -> Dict[str, str]:
    """``{relative name: digest}`` for a file, or for each file of a directory, and for a data dir the
    size and modification time of every audio file its ``wav.scp`` names (audio rewritten in place
    under the same name is another input)."""
    if path.is_file():
        return {"": _file_digest(path)}
    if path.is_dir():
        found = {child.name: _file_digest(child) for child in sorted(path.iterdir())
                 if child.is_file() and not child.name.startswith(".")}
        if (path / "wav.scp").is_file():
            found[AUDIO] = _audio_digest(path / "wav.scp")
        return found
    return {"": "missing"}


def _audio_digest(wav_scp: Path) -> str:
    """One digest of each named file's path, size and modification time (a command line, ``... |``, is
    covered by wav.scp's own digest)."""
    digest = hashlib.sha1()
    with wav_scp.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            parts = line.strip().split(maxsplit=1)
            if len(parts) < 2 or parts[1].endswith("|"):
                continue
            try:
                status = os.stat(parts[1])
                digest.update(f"{parts[1]} {status.st_size} {status.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{parts[1]} missing\n".encode())
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    status = path.stat()
    if status.st_size > HASH_LIMIT:
        return f"size {status.st_size}, modified {status.st_mtime_ns}"
    digest = hashlib.sha1()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(options: Sequence[str], inputs: Sequence[str]) -> dict:
    values = {}
    for option in options:
        name, sep, value = option.partition("=")
        if not sep:
            raise StageError(f"marker: --option {option!r} is not NAME=VALUE")
        values[name] = value
    return {"options": values, "inputs": {path: fingerprint(Path(path)) for path in inputs}}


def changes(old: dict, new: dict) -> List[str]:
    """What differs between two :func:`describe` results, in words."""
    found = []
    old_options, new_options = old.get("options", {}), new["options"]
    for name in sorted(set(old_options) | set(new_options)):
        if old_options.get(name) != new_options.get(name):
            found.append(f"--{name} was {old_options.get(name, '(unset)')!r}, now {new_options.get(name, '(unset)')!r}")
    old_inputs, new_inputs = old.get("inputs", {}), new["inputs"]
    for path in sorted(set(old_inputs) | set(new_inputs)):
        if path not in old_inputs:
            found.append(f"{path} is a new input")
        elif path not in new_inputs:
            found.append(f"{path} is no longer an input")
        elif old_inputs[path] != _comparable(old_inputs[path], new_inputs[path]):
            before, after = old_inputs[path], _comparable(old_inputs[path], new_inputs[path])
            names = sorted(n for n in set(before) | set(after) if before.get(n) != after.get(n))
            where = f" ({', '.join(names)})" if names != [""] else ""
            found.append(f"{path} changed{where}")
    return found


def _comparable(before: dict, after: dict) -> dict:
    """``after``, less the audio's fingerprint where ``before`` (a marker written before audio was
    fingerprinted) has none: not knowing it is not a change."""
    if AUDIO in after and AUDIO not in before:
        return {name: digest for name, digest in after.items() if name != AUDIO}
    return after


def started_marker(marker: Path) -> Path:
    return marker.with_name(marker.name[: -len(".done")] + ".started" if marker.name.endswith(".done")
                            else marker.name + ".started")


def read_marker(marker: Path) -> Optional[dict]:
    for path, finished in ((marker, True), (started_marker(marker), False)):
        if path.exists():
            try:
                return {**json.loads(path.read_text()), "finished": finished}
            except ValueError:  # an empty .done from a version that recorded nothing
                return {"options": {}, "inputs": {}, "finished": finished, "legacy": True}
    return None


def check(marker: Path, stage: str, on_change: str, hint: str, state: dict) -> int:
    old = read_marker(marker)
    if old is None:
        return RUN
    if old.get("legacy"):
        found = ["it was made by an older espnet-lowrank that did not record its inputs"]
    else:
        found = changes(old, state)
    if not found:
        if old.get("finished"):
            print(f"stage {stage}: already done ({marker}; same options and inputs)", file=sys.stderr)
            return SKIP
        return RUN
    what = "; ".join(found)
    if on_change == "redo":
        print(f"stage {stage}: redoing {marker.parent}: {what}", file=sys.stderr)
        for path in (marker, started_marker(marker)):
            path.unlink(missing_ok=True)
        return RUN
    raise StageError(f"stage {stage}: {marker.parent} was made from other inputs: {what}. {hint}")


def record(marker: Path, state: dict, finished: bool) -> None:
    target = marker if finished else started_marker(marker)
    atomic.write_text(target, json.dumps(state, indent=1, sort_keys=True) + "\n")
    if finished:
        started_marker(marker).unlink(missing_ok=True)


@one_line_errors
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("check", "record"):
        sub = commands.add_parser(name)
        sub.add_argument("marker", type=Path)
        sub.add_argument("--option", action="append", default=[], help="NAME=VALUE the stage ran with")
        sub.add_argument("--input", action="append", default=[], help="a file or directory the stage read")
        if name == "check":
            sub.add_argument("--stage", required=True)
            sub.add_argument("--on_change", choices=["redo", "stop"], default="redo")
            sub.add_argument("--hint", default="", help="with --on_change stop: how to redo it")
        else:
            sub.add_argument("--started", action="store_true", help="the stage begins (not finished)")
    args = parser.parse_args(argv)
    state = describe(args.option, args.input)
    if args.command == "check":
        sys.exit(check(args.marker, args.stage, args.on_change, args.hint, state))
    record(args.marker, state, finished=not args.started)


if __name__ == "__main__":
    main()
