"""The Celery configuration for long GPU tasks, and the worker's refusal to start with a broken one."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from rlft_contracts.broker import TASK_NAME
from rlft_contracts.settings import Settings
from service.queue import make_producer
from worker.celery_app import celery_config, create_celery, validate_config


def _settings(tmp_path, **env) -> Settings:
    return Settings(data_dir=tmp_path, **env)


def test_defaults_follow_the_rules(tmp_path):
    settings = _settings(tmp_path, broker_url="redis://127.0.0.1:6379/0")
    app = create_celery(settings)
    conf = app.conf
    assert validate_config(conf, settings) == []
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert not conf.result_backend and conf.task_ignore_result
    assert (
        settings.job_time_limit_s < conf.task_time_limit < conf.broker_transport_options["visibility_timeout"]
    )
    assert sorted(q.name for q in conf.task_queues) == ["cpu", "gpu"]
    # Each queue routes to itself (a shared default exchange would send cpu jobs to gpu workers).
    assert {q.name: q.routing_key for q in conf.task_queues} == {"cpu": "cpu", "gpu": "gpu"}
    assert "worker.tasks" in conf.include and conf.task_routes[TASK_NAME] == {"queue": "gpu"}


def test_embedded_broker_needs_no_server_and_takes_no_visibility_option(tmp_path):
    settings = _settings(tmp_path)
    conf = celery_config(settings)
    assert conf["broker_url"].startswith("sqla+sqlite:///")
    assert conf["broker_transport_options"] == {}
    assert validate_config(create_celery(settings).conf, settings) == []


@pytest.mark.parametrize(
    ("broker_url", "takes_timeout"),
    [
        ("redis://127.0.0.1:6379/0", True),
        ("rediss://cache.example:6380/0", True),
        ("sqs://", True),
        ("sqla+sqlite:///{tmp}/broker.sqlite", False),  # create_engine would reject the option
        ("amqp://guest@127.0.0.1//", False),  # redelivers on a lost connection, not on a timer
        ("memory://", False),
    ],
)
def test_producer_and_workers_tell_the_broker_the_same_transport_options(tmp_path, broker_url, takes_timeout):
    settings = _settings(
        tmp_path, broker_url=broker_url.format(tmp=tmp_path), broker_visibility_timeout_s=90000
    )
    producer = make_producer(settings)
    try:
        sent = dict(producer.conf.broker_transport_options)
    finally:
        producer.close()
    assert sent == create_celery(settings).conf.broker_transport_options
    assert sent == ({"visibility_timeout": 90000} if takes_timeout else {})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task_acks_late": False}, "task_acks_late"),
        ({"task_reject_on_worker_lost": False}, "task_reject_on_worker_lost"),
        ({"worker_prefetch_multiplier": 4}, "prefetch"),
        ({"accept_content": ["json", "pickle"]}, "JSON only"),
        ({"result_backend": "redis://127.0.0.1:6379/1"}, "result_backend"),
        ({"task_time_limit": 10}, "RLFT_JOB_TIME_LIMIT_S"),
        ({"broker_transport_options": {"visibility_timeout": 3600}}, "RLFT_BROKER_VISIBILITY_TIMEOUT_S"),
    ],
)
def test_each_broken_setting_is_named(tmp_path, change, message):
    settings = _settings(tmp_path, broker_url="redis://127.0.0.1:6379/0")
    conf = SimpleNamespace(**{**celery_config(settings), **change})
    problems = validate_config(conf, settings)
    assert len(problems) == 1 and message in problems[0]


def test_worker_refuses_to_start_with_a_short_visibility_timeout(tmp_path):
    env = {
        **os.environ,
        "RLFT_DATA_DIR": str(tmp_path),
        "RLFT_BROKER_URL": "redis://127.0.0.1:1/0",  # never reached: the check comes first
        "RLFT_BROKER_VISIBILITY_TIMEOUT_S": "3600",
        "RLFT_JOB_TIME_LIMIT_S": "7200",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool", "solo", "-Q", "gpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "refuses to start" in proc.stderr and "RLFT_BROKER_VISIBILITY_TIMEOUT_S (3600)" in proc.stderr
