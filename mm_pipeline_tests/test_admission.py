"""Command-line runs wait for the instance's max_concurrent_runs, like runs from the UI's queue, and
clean up after command-line processes that were killed. Also: which executor a deployment gets."""

import subprocess
import threading
import time

import dagster as dg
import pytest

from mm_pipeline.defs.admission import CLI_HOST_TAG, CLI_PID_TAG, admitted_run, cli_run_tags


@dg.op
def noop():
    return None


@dg.job
def tiny_job():
    noop()


@pytest.fixture
def instance(tmp_path):
    with dg.instance_for_test(
        temp_dir=str(tmp_path), overrides={"concurrency": {"runs": {"max_concurrent_runs": 1}}}
    ) as instance:
        yield instance


def _in_progress_run(instance, tags):
    return instance.create_run_for_job(tiny_job, run_config={}, tags=tags, status=dg.DagsterRunStatus.STARTED)


def test_a_run_left_by_a_killed_command_line_is_failed_and_does_not_block(instance):
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer exists
    orphan = _in_progress_run(instance, {**cli_run_tags(), CLI_PID_TAG: str(dead.pid)})
    messages = []
    result = admitted_run(
        instance,
        lambda tags: tiny_job.execute_in_process(instance=instance, tags=tags),
        timeout_s=10,
        log=messages.append,
    )
    assert result.success and result.dagster_run.tags[CLI_HOST_TAG]
    assert instance.get_run_by_id(orphan.run_id).status == dg.DagsterRunStatus.FAILURE
    assert any(orphan.run_id in m and "marked failed" in m for m in messages)


def test_a_command_line_run_waits_for_a_free_run_slot(instance):
    busy = _in_progress_run(instance, {"dagster/from_ui": "yes"})  # e.g. launched by the daemon, still going

    def finish_it():
        time.sleep(1.5)
        instance.report_run_canceled(busy)  # the run ends: its slot frees up

    threading.Thread(target=finish_it).start()
    messages, started = [], time.monotonic()
    result = admitted_run(
        instance,
        lambda tags: tiny_job.execute_in_process(instance=instance, tags=tags),
        timeout_s=30,
        poll_s=0.1,
        log=messages.append,
    )
    assert result.success and time.monotonic() - started >= 1.4
    assert any("Waiting: 1 run(s) in progress and max_concurrent_runs is 1" in m for m in messages)


def test_no_free_slot_in_time_is_a_clear_error(instance):
    _in_progress_run(instance, {})
    with pytest.raises(TimeoutError, match="no run slot became free within 0.5 s"):
        admitted_run(
            instance, lambda tags: pytest.fail("must not start"), timeout_s=0.5, poll_s=0.1, log=lambda m: None
        )


def test_executor_choice_and_its_configuration_errors(monkeypatch):
    from mm_pipeline.defs.build import pipeline_executor

    monkeypatch.delenv("MM_PIPELINE_EXECUTOR", raising=False)
    assert pipeline_executor() is dg.in_process_executor
    monkeypatch.setenv("MM_PIPELINE_EXECUTOR", "dask")
    with pytest.raises(ValueError, match="MM_PIPELINE_EXECUTOR='dask'.*in_process, multiprocess, celery"):
        pipeline_executor()
    monkeypatch.setenv("MM_PIPELINE_EXECUTOR", "celery")
    monkeypatch.delenv("MM_PIPELINE_CELERY_BROKER", raising=False)
    monkeypatch.setenv("MM_PIPELINE_CELERY_BACKEND", "redis://127.0.0.1:6379/0")
    with pytest.raises(ValueError, match="needs MM_PIPELINE_CELERY_BROKER"):
        pipeline_executor()
    monkeypatch.setenv("MM_PIPELINE_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
    assert pipeline_executor().name == "celery"
