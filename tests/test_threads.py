"""Threads divided among parallel torch processes, and the benchmark that reads their logs."""

import os

import pytest

from espnet_lowrank.errors import InputError
from espnet_lowrank.threads import job_environment, main, threads_per_job, usable_cores
from dev.bench_jobs import omp_num_threads, seconds_per_utterance


@pytest.mark.parametrize("exported,jobs,threads", [("2", 2, 1), ("2", 1, 2), ("8", 3, 2), ("1", 4, 1)])
def test_an_exported_omp_num_threads_is_divided_among_the_jobs(exported, jobs, threads):
    assert threads_per_job(jobs, environ={"OMP_NUM_THREADS": exported}) == threads


def test_unset_the_usable_cores_are_divided():
    assert threads_per_job(1, environ={}) == usable_cores() == len(os.sched_getaffinity(0))
    assert threads_per_job(usable_cores() + 1, environ={}) == 1  # never 0


def test_job_threads_overrides_the_division():
    assert threads_per_job(2, job_threads=3, environ={"OMP_NUM_THREADS": "2"}) == 3


@pytest.mark.parametrize("environ,jobs,job_threads,message", [
    ({"OMP_NUM_THREADS": "two"}, 2, 0, "OMP_NUM_THREADS='two' must be a whole number"),
    ({"OMP_NUM_THREADS": "0"}, 2, 0, "OMP_NUM_THREADS='0' must be a whole number"),
    ({}, 0, 0, "jobs=0"),
    ({}, 2, -1, "--job_threads -1 must be >= 0"),
])
def test_bad_values_are_named(environ, jobs, job_threads, message):
    with pytest.raises(InputError, match=message):
        threads_per_job(jobs, job_threads, environ)


def test_the_job_environment_keeps_everything_else():
    environ = job_environment(2, environ={"OMP_NUM_THREADS": "4", "PATH": "/bin"})
    assert environ == {"OMP_NUM_THREADS": "2", "PATH": "/bin"}


def test_the_command_prints_the_share(capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    main(["--jobs", "2"])
    assert capsys.readouterr().out.strip() == "1"


def test_the_benchmark_times_each_utterance_from_the_logs(tmp_path):
    log = tmp_path / "asr_inference.1.log"
    log.write_text(
        "2026-11-27 10:00:00,000 (asr_inference:571) INFO: speech length: 16000\n"
        "2026-11-27 10:00:00,250 (batch_beam_search:1259) INFO: best hypo: A\n"
        "2026-11-27 10:00:05,000 (asr_inference:571) INFO: speech length: 32000\n"
        "2026-11-27 10:00:05,750 (batch_beam_search:1259) INFO: best hypo: B\n"
    )
    assert seconds_per_utterance([log]) == pytest.approx(0.5)
    log.write_text("2026-11-27 10:00:00,000 (asr_inference:571) INFO: speech length: 16000\n")
    with pytest.raises(InputError, match="1 utterances started, 0 decoded"):
        seconds_per_utterance([log])


def test_the_benchmark_restores_the_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    with omp_num_threads(None):
        assert "OMP_NUM_THREADS" not in os.environ
    with omp_num_threads(2):
        assert os.environ["OMP_NUM_THREADS"] == "2"
    assert os.environ["OMP_NUM_THREADS"] == "7"
