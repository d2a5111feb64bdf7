"""A disk that fills while run.sh writes a dump, a checkpoint or a decode: the run stops naming the full
disk in one line, keeps what it had finished, and the same command goes on once space is freed. Each test
mounts a small tmpfs of its own (as root; skipped, saying why, where mounting is not allowed)."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from tiny_recipe import SPEED_PERTURB, TINY, run

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'mount failed'}): needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk):
    """Take every free byte of ``disk``, as another job's output would; returns the filler to delete."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 20, 4096, 1):  # megabytes, then the last pages, then the last bytes
            try:
                while True:
                    os.write(descriptor, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(descriptor)
    return filler


def stops_naming_the_full_disk(result, disk):
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert errors and "No space left on device" in errors[-1] and str(disk) in errors[-1], result.stderr[-3000:]
    assert "run the same command again" in errors[-1]
    assert "Traceback" not in result.stderr


def test_a_full_disk_while_dumping(pipeline, small_disk):
    recipe = pipeline["recipe"]
    options = [*TINY, *SPEED_PERTURB, "--dumpdir", str(small_disk / "dump"), "--stage", "3", "--stop_stage", "4"]
    filler = fill(small_disk)
    stops_naming_the_full_disk(run(recipe, *options, check=False), small_disk)
    filler.unlink()
    run(recipe, *options)
    dumped = (small_disk / "dump" / "raw" / "train_sp" / "wav.scp").read_text().splitlines()
    assert len(dumped) == len((recipe / "data" / "train_sp" / "wav.scp").read_text().splitlines())


def test_a_full_disk_while_writing_a_checkpoint(pipeline, small_disk):
    recipe = pipeline["recipe"]
    exp = small_disk / "exp" / "asr_full"
    options = [*TINY, *SPEED_PERTURB, "--expdir", str(small_disk / "exp"), "--asr_tag", "full",
               "--stage", "10", "--stop_stage", "11",
               "--asr_args", "--max_epoch 3 --batch_size 2 --batch_type unsorted"]
    process = subprocess.Popen(["./run.sh", "--python", sys.executable, *options], cwd=recipe,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 300
    while not (exp / "1epoch.pth").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert (exp / "1epoch.pth").exists(), process.communicate()[1][-3000:]
    filler = fill(small_disk)  # epoch 2's checkpoint finds no room
    stderr = process.communicate()[1]
    stops_naming_the_full_disk(subprocess.CompletedProcess(process.args, process.returncode, "", stderr), small_disk)
    assert not (exp / "3epoch.pth").exists()
    first_epoch = (exp / "1epoch.pth").stat().st_mtime_ns
    filler.unlink()
    run(recipe, *options)
    assert (exp / "3epoch.pth").exists() and (exp / "1epoch.pth").stat().st_mtime_ns == first_epoch


#: Loaded by every Python that run.sh starts (PYTHONPATH): the first plot ESPnet's trainer saves into the
#: small disk fills it first, so that the real PNG writer meets the full disk; it then dies as a probe saw
#: it die: the ENOSPC under Pillow's ``AttributeError`` lost, the log's last error saying nothing of a disk
#: (whether the last error is that or an ENOSPC depends on the moment the disk fills and what frees it).
FILL_AT_FIRST_PLOT = """
import os
DISK = {disk!r}


def _fill_then_save(original):
    def savefig(self, fname, *args, **kwargs):
        if str(fname).startswith(DISK) and not os.path.exists(DISK + "/filler"):
            descriptor = os.open(DISK + "/filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            for size in (1 << 20, 4096, 1):
                try:
                    while True:
                        os.write(descriptor, b"\\0" * size)
                except OSError:
                    pass
            os.close(descriptor)
            try:
                original(self, fname, *args, **kwargs)
            finally:  # room for the log's last lines, as a disk shared with other jobs may have
                os.truncate(DISK + "/filler", os.path.getsize(DISK + "/filler") - (64 << 10))
                raise AttributeError("'_idat' object has no attribute 'fileno'")
        return original(self, fname, *args, **kwargs)
    return savefig


if os.environ.get("FILL_AT_FIRST_PLOT"):
    import matplotlib.figure
    matplotlib.figure.Figure.savefig = _fill_then_save(matplotlib.figure.Figure.savefig)
"""


def test_a_full_disk_met_by_the_training_plots_is_named_whatever_the_plot_writer_dies_of(pipeline, small_disk,
                                                                                          tmp_path):
    recipe = pipeline["recipe"]
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FILL_AT_FIRST_PLOT.format(disk=str(small_disk)))
    options = [*TINY, *SPEED_PERTURB, "--expdir", str(small_disk / "exp"), "--asr_tag", "plots", "--stage", "10",
               "--stop_stage", "11", "--asr_args", "--max_epoch 2 --batch_size 8 --batch_type unsorted"]
    environment = dict(os.environ, PYTHONPATH=str(hook), FILL_AT_FIRST_PLOT="1", OMP_NUM_THREADS="1")
    result = subprocess.run(["./run.sh", "--python", sys.executable, *options], cwd=recipe, capture_output=True,
                            text=True, env=environment)
    assert (small_disk / "filler").exists(), result.stderr[-3000:]  # the plot was where the disk filled
    stops_naming_the_full_disk(result, small_disk)
    (small_disk / "filler").unlink()
    run(recipe, *options)
    assert (small_disk / "exp" / "asr_plots" / "2epoch.pth").exists()


def test_a_full_disk_while_decoding(pipeline, small_disk):
    recipe = pipeline["recipe"]
    trained, exp = pipeline["exp"], small_disk / "exp" / "asr_tiny_lowrank"
    exp.mkdir(parents=True)
    shutil.copy(trained / "config.yaml", exp)
    shutil.copy(trained / "valid.acc.ave.pth", exp)  # the file the link names
    options = [*TINY, "--expdir", str(small_disk / "exp"), "--stage", "12", "--stop_stage", "12"]
    filler = fill(small_disk)
    stops_naming_the_full_disk(run(recipe, *options, check=False), small_disk)
    filler.unlink()
    run(recipe, *options)
    decoded = next(exp.glob("decode_*/test/text")).read_text().splitlines()
    assert len(decoded) == len((recipe / "dump" / "raw" / "test" / "wav.scp").read_text().splitlines())


@pytest.mark.parametrize("died_of", [AttributeError("'_idat' object has no attribute 'fileno'"),
                                     OSError(5, "Input/output error")])
def test_whatever_a_stage_dies_of_on_a_nearly_full_disk_is_told_as_the_full_disk(tmp_path, monkeypatch, died_of):
    """The same rule for every Python stage (writing_into), without a disk to fill: the check says full."""
    from espnet_lowrank import errors

    monkeypatch.setattr(errors, "nearly_full", lambda directory: True)

    @errors.one_line_errors
    def stage():
        with errors.writing_into(tmp_path):
            raise died_of

    with pytest.raises(SystemExit, match=rf"^ERROR: No space left on device \(it died of {type(died_of).__name__}: "
                                         rf".*\) writing {tmp_path}: free space there and run the same command"):
        stage()
    monkeypatch.setattr(errors, "nearly_full", lambda directory: False)
    with pytest.raises(type(died_of)):  # with room on the disk, a bug is a bug
        stage()
