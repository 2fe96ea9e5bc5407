"""docker-compose.yml and Dockerfile: structure checked without a Docker engine.

The compose file is validated against the Compose Specification's JSON schema (shipped by the
check-jsonschema package), then against what the deployment promises: the five services, an NVIDIA
device reservation on a scalable worker, health checks, volumes, and start-up ordering.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_matches_the_compose_schema(compose):
    jsonschema = pytest.importorskip("jsonschema")
    vendor = pytest.importorskip("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((Path(vendor.__file__).parent / "compose-spec.json").read_text())
    # Draft 7 is what the compose spec declares; every error is listed so a failure says what to fix.
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_deployment_has_its_five_services(compose):
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(compose["services"])


def test_worker_reserves_nvidia_gpus_and_can_be_scaled(compose):
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    # --scale worker=N fails on a fixed container name or a published host port.
    assert "container_name" not in worker and "ports" not in worker
    # Replicas on one machine take distinct GPUs through locks on a volume they share.
    args = _parse(worker["command"])
    assert args.gpus >= 1 and args.gpu_lock_dir
    assert any(v.endswith(":" + args.gpu_lock_dir) for v in worker["volumes"])


def test_reward_url_policy_is_the_same_for_api_and_worker(compose):
    api_env, worker_env = (
        compose["services"]["api"]["environment"],
        compose["services"]["worker"]["environment"],
    )
    for name in ("RLFT_REWARD_URL_ALLOWLIST", "RLFT_ALLOW_PRIVATE_REWARD_URLS"):
        assert api_env[name] == worker_env[name]


def test_workers_hold_no_database_credentials(compose):
    env = compose["services"]["worker"]["environment"]
    assert "RLFT_DATABASE_URL" not in env
    assert {"RLFT_API_URL", "RLFT_BROKER_URL", "RLFT_WORKER_SECRET", "RLFT_ARTIFACT_STORE"} <= set(env)


def test_long_running_services_have_health_checks(compose):
    for name in ("postgres", "redis", "api", "worker"):
        assert compose["services"][name]["healthcheck"]["test"], name


def test_start_up_waits_for_health_and_for_the_migration(compose):
    services = compose["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    api_deps = services["api"]["depends_on"]
    assert api_deps["migrate"]["condition"] == "service_completed_successfully"
    assert api_deps["postgres"]["condition"] == api_deps["redis"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"


def test_database_and_artifacts_live_on_named_volumes(compose):
    declared = set(compose["volumes"])
    services = compose["services"]

    def mounted(name: str) -> dict[str, str]:
        return dict(v.split(":", 1)[::-1] for v in services[name].get("volumes", []))

    assert mounted("postgres")["/var/lib/postgresql/data"] in declared
    # The API streams checkpoints that the workers wrote: both see the same store.
    assert mounted("api")["/artifacts"] == mounted("worker")["/artifacts"] in declared
    assert services["api"]["environment"]["RLFT_ARTIFACT_STORE"] == "/artifacts"


def _parse(argv: list[str]):
    """The CLI's reading of a compose command, ${VAR:-default} taken at its default."""
    from rlft.cli import parser as _parser

    assert argv[0] == "rlft"
    return _parser().parse_args([re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", a) for a in argv[1:]])


def test_service_commands_are_real_cli_commands(compose):
    for name in ("migrate", "api", "worker"):
        _parse(compose["services"][name]["command"])  # a usage error exits 2 and fails the test


def test_dockerfile_installs_torch_first_and_runs_unprivileged():
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    torch_at = next(i for i, ln in enumerate(lines) if "TORCH_SPEC" in ln and ln.startswith("RUN"))
    install_at = next(i for i, ln in enumerate(lines) if "pip install ." in ln)
    assert torch_at < install_at
    assert any(ln.startswith("USER ") and ln.split()[1] != "root" for ln in lines)
    cmd = next(ln for ln in lines if ln.startswith("CMD"))
    assert shlex.split(cmd[3:].replace("[", "").replace("]", "").replace(",", ""))[:2] == ["rlft", "serve"]
