"""The Docker files, parsed: there is no Docker engine here, so their shape is checked."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from infra.config import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines()]
    return [
        (ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "")
        for ln in lines
        if ln and not ln.startswith("#")
    ]


def _command(service: dict) -> list[str]:
    cmd = service["command"]
    return cmd if isinstance(cmd, list) else shlex.split(cmd)


def test_compose_has_every_service(compose):
    assert {"api", "worker", "redis", "postgres", "minio", "minio-init", "flower"} <= set(
        compose["services"]
    )


def test_api_and_worker_share_one_image_and_run_the_cli(compose):
    api, worker = compose["services"]["api"], compose["services"]["worker"]
    assert api["image"] == worker["image"] and api["build"] == "."
    assert _command(api)[0] == "api" and "0.0.0.0" in _command(api)
    cmd = _command(worker)
    assert cmd[0] == "worker" and cmd[cmd.index("--gpu") + 1] == "0"
    assert cmd[cmd.index("--concurrency") + 1] == "1"


def test_worker_reserves_one_nvidia_gpu(compose):
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_redis_is_durable_and_never_evicts(compose):
    cmd = " ".join(_command(compose["services"]["redis"]))
    assert "--appendonly yes" in cmd and "--maxmemory-policy noeviction" in cmd


def test_env_wiring_points_at_the_compose_services(compose):
    for name in ("api", "worker"):
        env = compose["services"][name]["environment"]
        assert env["SECATEURS_BROKER_URL"].startswith("redis://redis:6379/")
        assert env["SECATEURS_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "@postgres:5432/" in env["SECATEURS_DATABASE_URL"]
        assert env["SECATEURS_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["SECATEURS_S3_BUCKET"]
        # Every variable names a real setting (a typo would be silently ignored).
        fields = {f.upper() for f in Settings.model_fields}
        assert {k.removeprefix("SECATEURS_") for k in env} <= fields


def test_bucket_is_created_and_flower_needs_a_password(compose):
    init = compose["services"]["minio-init"]
    bucket = compose["services"]["api"]["environment"]["SECATEURS_S3_BUCKET"]
    assert f"mc mb --ignore-existing local/{bucket}" in " ".join(init["entrypoint"])
    flower = " ".join(_command(compose["services"]["flower"]))
    assert "--basic-auth=" in flower and "FLOWER_PASSWORD:?" in flower
    assert all(p.startswith("127.0.0.1:") for p in compose["services"]["flower"]["ports"])


def test_dockerfile_is_cuda_runtime_python311_non_root(dockerfile):
    args = dict(a.split("=", 1) for i, a in dockerfile if i == "ARG" and "=" in a)
    base = args["CUDA_IMAGE"]
    assert base.startswith("nvidia/cuda:12.") and "cudnn-runtime" in base
    assert any("python3.11" in a for i, a in dockerfile if i == "RUN")
    users = [a for i, a in dockerfile if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    last_stage = max(n for n, (i, _) in enumerate(dockerfile) if i == "FROM")
    assert any(i == "USER" for i, _ in dockerfile[last_stage:])
    entry = [a for i, a in dockerfile if i == "ENTRYPOINT"][-1]
    assert '"secateurs"' in entry


def test_dockerignore_keeps_local_state_out():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "data"} <= ignored


def test_the_image_has_the_sandbox_and_runs_unprivileged(dockerfile, compose):
    installs = " ".join(args for inst, args in dockerfile if inst == "RUN")
    assert all(pkg in installs for pkg in ("bubblewrap", "util-linux", "libseccomp2"))
    users = [args for inst, args in dockerfile if inst == "USER"]
    assert users and users[-1] not in ("root", "0")
    for name in ("api", "worker"):
        # bubblewrap needs user namespaces, which Docker's default profiles refuse.
        assert "seccomp=unconfined" in compose["services"][name]["security_opt"]
