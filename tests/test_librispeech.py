import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile

from espnet_lowrank.data import librispeech
from espnet_lowrank.data.kaldi_dir import read_data_dir
from espnet_lowrank.errors import InputError


def make_librispeech_tree(root: Path, part: str = "dev-clean") -> Path:
    """A two-speaker LibriSpeech-layout part with real flac files."""
    rng = np.random.default_rng(0)
    for speaker, chapter in (("84", "121123"), ("1272", "128104")):
        chapter_dir = root / "LibriSpeech" / part / speaker / chapter
        chapter_dir.mkdir(parents=True)
        lines = []
        for index in range(3):
            utt = f"{speaker}-{chapter}-{index:04d}"
            soundfile.write(chapter_dir / f"{utt}.flac", 0.1 * rng.standard_normal(1600), 16000)
            lines.append(f"{utt} WORDS OF {speaker} NUMBER {index}")
        (chapter_dir / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return root / "LibriSpeech"


def test_prepare_writes_a_kaldi_data_dir(tmp_path):
    root = make_librispeech_tree(tmp_path / "corpus")
    count = librispeech.prepare_part(root, "dev-clean", tmp_path / "data" / "dev_clean")
    assert count == 6
    out = tmp_path / "data" / "dev_clean"
    utterances = read_data_dir(out)
    assert [u.utt_id for u in utterances] == sorted(u.utt_id for u in utterances)
    first = utterances[0]
    assert first.utt_id == "1272-128104-0000" and first.speaker == "1272"
    assert first.text == "WORDS OF 1272 NUMBER 0"
    assert soundfile.info(first.audio).samplerate == 16000
    spk2utt = (out / "spk2utt").read_text().splitlines()
    assert spk2utt[0] == "1272 1272-128104-0000 1272-128104-0001 1272-128104-0002"
    assert not (tmp_path / "data" / "dev_clean.tmp").exists()


def test_missing_flac_is_named(tmp_path):
    root = make_librispeech_tree(tmp_path / "corpus")
    (root / "dev-clean" / "84" / "121123" / "84-121123-0001.flac").unlink()
    with pytest.raises(InputError, match=r"84-121123.trans.txt:2: utterance 84-121123-0001"):
        librispeech.prepare_part(root, "dev-clean", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_root_is_named(tmp_path):
    with pytest.raises(InputError, match="is .* a LibriSpeech root"):
        librispeech.prepare_part(tmp_path, "dev-clean", tmp_path / "out")


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves in-memory files, honouring ``Range: bytes=N-`` as openslr does."""

    files: dict = {}
    requests: list = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        body = self.files.get(self.path)
        self.requests.append((self.path, self.headers.get("Range")))
        if body is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture()
def server(tmp_path):
    source = make_librispeech_tree(tmp_path / "source", part="dev-clean")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(source, arcname="LibriSpeech")
    archive = buffer.getvalue()
    RangeHandler.files = {"/resources/12/dev-clean.tar.gz": archive}
    RangeHandler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/resources/12", archive
    httpd.shutdown()


def test_download_verifies_resumes_and_unpacks(tmp_path, server, monkeypatch):
    base_url, archive = server
    monkeypatch.setitem(librispeech.PART_MD5, "dev-clean", hashlib.md5(archive).hexdigest())
    dest = tmp_path / "downloads"
    dest.mkdir()
    (dest / "dev-clean.tar.gz.part").write_bytes(archive[:1000])  # an interrupted earlier run
    root = librispeech.download_part("dev-clean", dest, base_url)
    assert RangeHandler.requests == [("/resources/12/dev-clean.tar.gz", "bytes=1000-")]
    assert librispeech.prepare_part(root, "dev-clean", tmp_path / "data") == 6
    # a second run finds the marker and fetches nothing
    librispeech.download_part("dev-clean", dest, base_url)
    assert len(RangeHandler.requests) == 1


def test_download_with_a_bad_checksum_keeps_nothing(tmp_path, server):
    base_url, _ = server  # PART_MD5 holds the real openslr sum, which this archive cannot match
    with pytest.raises(ValueError, match="md5 .* does not match the published 42e2234b"):
        librispeech.download_part("dev-clean", tmp_path, base_url)
    assert not list(tmp_path.glob("dev-clean.tar.gz*"))


def test_unknown_part_is_named(tmp_path):
    with pytest.raises(ValueError, match="'dev-dirty' is unknown"):
        librispeech.download_part("dev-dirty", tmp_path)


def test_combine_makes_one_dir_of_several(tmp_path):
    from espnet_lowrank.data.kaldi_dir import combine

    root = make_librispeech_tree(tmp_path / "a", part="dev-clean")
    make_librispeech_tree(tmp_path / "b", part="dev-other")
    librispeech.prepare_part(root, "dev-clean", tmp_path / "dev_clean")
    librispeech.prepare_part(tmp_path / "b" / "LibriSpeech", "dev-other", tmp_path / "dev_other")
    # the same speaker ids in both parts, as the generator writes them: utterance ids clash
    with pytest.raises(ValueError, match="appears twice"):
        combine(tmp_path / "dev", [tmp_path / "dev_clean", tmp_path / "dev_other"])
    assert combine(tmp_path / "dev", [tmp_path / "dev_clean"]) == 6


@pytest.mark.parametrize("with_data_filter", [True, False])
def test_unpacking_refuses_members_outside_the_destination(tmp_path, monkeypatch, with_data_filter):
    """tarfile's "data" filter where Python has it (3.11.4+), the same rule checked by hand before."""
    if not with_data_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    for name, kind in (("../evil.txt", tarfile.REGTYPE), ("LibriSpeech/link", tarfile.SYMTYPE)):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            member = tarfile.TarInfo(name)
            member.type = kind
            if kind == tarfile.SYMTYPE:
                member.linkname = "/etc/passwd"
            tar.addfile(member, io.BytesIO(b""))
        buffer.seek(0)
        dest = tmp_path / "dest"
        dest.mkdir(exist_ok=True)
        with tarfile.open(fileobj=buffer) as tar, pytest.raises((ValueError, tarfile.TarError)):
            librispeech._extract_data(tar, dest, Path("x.tar.gz"))
        assert not (tmp_path / "evil.txt").exists() and not (dest / "LibriSpeech" / "link").exists()
