"""ESPnet's ``asr_model.zip`` in and out of the tools (``convert``, ``merge``).

A pack holds a config, the weights and the files the config names (feature
statistics, a SentencePiece model). Unpacking is espnet_model_zoo's, as for
``Speech2Text``; packing copies the named files beside the config, points the
config at them by their names, and packs from there with ESPnet's own
``espnet2.bin.pack asr``, which stores paths relative to where it runs: so the
unpacker finds and rewrites every one, wherever the originals were.
"""

import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Mapping, Tuple

import yaml

from espnet_lowrank.errors import InputError


def unpack_model(archive, into) -> Tuple[Path, Path]:
    """``(config.yaml, weights)`` of an ``asr_model.zip``, unpacked under ``into`` and nowhere else."""
    from espnet_model_zoo.downloader import ModelDownloader

    archive = Path(archive)
    if not archive.is_file():
        raise InputError(f"model pack {archive} does not exist")
    check_members(archive)
    files = ModelDownloader(Path(into)).unpack_local_file(str(archive))
    if "asr_train_config" not in files or "asr_model_file" not in files:
        raise InputError(f"{archive} is not an ESPnet ASR pack (it holds {', '.join(files) or 'nothing'})")
    unpacked = Path(into).resolve()
    for key in ("asr_train_config", "asr_model_file"):
        if not Path(files[key]).resolve().is_relative_to(unpacked):
            raise InputError(f"{archive}: refused: its {key} is {files[key]}, outside the pack")
    return Path(files["asr_train_config"]), Path(files["asr_model_file"])


def check_members(archive: Path) -> None:
    """Refuse a pack with a member that would unpack outside its target dir: an absolute path, a ``..``,
    or a link (which a later member could write through)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as pack:
            members = [(info.filename, stat.S_ISLNK(info.external_attr >> 16)) for info in pack.infolist()]
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as pack:
            members = [(info.name, info.issym() or info.islnk()) for info in pack.getmembers()]
    else:
        raise InputError(f"{archive} is neither a zip nor a tar archive: not an ESPnet ASR pack")
    for name, link in members:
        path = PurePosixPath(name)
        if link or path.is_absolute() or ".." in path.parts:
            raise InputError(f"{archive}: refused: its member {name!r} would unpack outside the target dir")


def pack_model(values: Mapping, model_file, outpath) -> Path:
    """Pack the model of training options ``values`` with weights ``model_file`` into ``outpath``."""
    values = dict(values)
    named = []
    normalize_conf = dict(values.get("normalize_conf") or {})
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        for owner, key in ((normalize_conf, "stats_file"), (values, "bpemodel")):
            if owner.get(key):
                source = Path(owner[key])
                if not source.is_file():
                    raise InputError(f"the config's {key} {source} does not exist: cannot pack it")
                shutil.copy2(source, staging / source.name)
                owner[key] = source.name
                named.append(source.name)
        if normalize_conf:
            values["normalize_conf"] = normalize_conf
        (staging / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
        shutil.copy2(model_file, staging / "model.pth")
        outpath = Path(outpath).resolve()
        command = [sys.executable, "-m", "espnet2.bin.pack", "asr", "--asr_train_config", "config.yaml",
                   "--asr_model_file", "model.pth", "--outpath", str(outpath)]
        for name in named:
            command += ["--option", name]
        result = subprocess.run(command, cwd=staging, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"espnet2.bin.pack failed: {result.stderr.strip().splitlines()[-1:]}")
    return outpath
