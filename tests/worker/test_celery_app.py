"""The Celery settings that make long GPU jobs safe."""

from infra.config import Settings
from worker.celery_app import celery_config, is_embedded_broker


def test_long_job_settings():
    settings = Settings(
        broker_url="redis://127.0.0.1:6379/0", job_soft_time_limit_s=100, job_hard_time_limit_s=160
    )
    conf = celery_config(settings)
    assert conf["task_acks_late"] is True and conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1 and conf["worker_concurrency"] == 1
    assert conf["worker_max_tasks_per_child"] == 1 and conf["worker_pool"] == "prefork"
    assert (conf["task_soft_time_limit"], conf["task_time_limit"]) == (100, 160)
    assert conf["broker_transport_options"]["visibility_timeout"] > 160
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["task_ignore_result"] is True
    assert conf["broker_connection_retry_on_startup"] is True
    assert conf["task_routes"] == {"secateurs.run_job": {"queue": "jobs"}}


def test_embedded_broker_gets_no_engine_breaking_options(tmp_path):
    settings = Settings(data_dir=tmp_path, broker_url="")
    assert is_embedded_broker(settings.resolved_broker_url)
    assert celery_config(settings)["broker_transport_options"] == {}
    assert not is_embedded_broker("redis://x")


def test_worker_parent_does_not_import_torch(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, worker.tasks, worker.celery_app; "
        "print(any(m == 'torch' or m.startswith('torch.') for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"SECATEURS_DATA_DIR": str(tmp_path)},
    )
    assert out.stdout.strip() == "False"
