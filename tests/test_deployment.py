"""The server deployment files, checked without Docker (which this machine and CI do not have)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Commands each image is known to provide; a health check must start with one of them.
IMAGE_COMMANDS = {"postgres": {"pg_isready"}, "qdrant/qdrant": {"bash"}, "api": {"python"}}


def _command(test: list[str] | str) -> str:
    if isinstance(test, str):
        return test.split()[0]
    kind, *rest = test
    assert kind in ("CMD", "CMD-SHELL"), test
    return rest[0].split()[0]


def test_compose_file_declares_the_three_services_properly() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "qdrant", "api"}
    for name in ("postgres", "qdrant"):
        image = services[name]["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+(\.\d+)?", image), f"{name} image must be pinned: {image}"
    declared = set(compose["volumes"])
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in declared, f"{name} uses undeclared volume {source}"
        key = services[name].get("image", "api").split(":")[0]
        assert _command(service["healthcheck"]["test"]) in IMAGE_COMMANDS[key], name
    secrets = ("POSTGRES_PASSWORD", "QDRANT_API_KEY")
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in secrets:
        assert f"${{{secret}:?" in text, f"{secret} must come from the environment, required"
    api = services["api"]
    assert api["build"]["context"] == "." and (ROOT / api["build"]["dockerfile"]).is_file()
    assert api["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                 "qdrant": {"condition": "service_healthy"}}
    env = api["environment"]
    assert env["REGISTRY_DATABASE_URL"].startswith("postgresql+psycopg://") and "@postgres:5432/" in \
        env["REGISTRY_DATABASE_URL"]
    assert env["REGISTRY_QDRANT_URL"] == "http://qdrant:6333" and "QDRANT_API_KEY" in env["REGISTRY_QDRANT_API_KEY"]


def test_dockerfile_installs_the_server_and_migrates_before_serving() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", dockerfile, re.M)
    assert "server]" in dockerfile and "postgres" in dockerfile
    for copied in ("registry", "alembic.ini", "pyproject.toml"):
        assert re.search(rf"^COPY .*{re.escape(copied)}", dockerfile, re.M) and (ROOT / copied).exists()
    # the migrations ship inside the package, so a plain (non-editable) install carries them
    assert (ROOT / "registry" / "store" / "migrations" / "env.py").exists() and "pip install -e" not in dockerfile
    command = dockerfile[dockerfile.index("CMD ["):]
    assert command.index("registry init") < command.index("registry serve")  # migrations run first
    assert "USER registry" in dockerfile  # not root
