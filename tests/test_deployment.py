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
    assert {n for n, s in services.items() if not s.get("profiles")} == {"postgres", "qdrant", "api"}
    for name in ("postgres", "qdrant", "qdrant-node-1"):
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


def test_production_profile_is_a_three_node_qdrant_cluster() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    production = {n for n, s in services.items() if "production" in s.get("profiles", [])}
    assert production == {"qdrant-node-1", "qdrant-node-2", "qdrant-node-3", "api-production"}
    nodes = [services[f"qdrant-node-{k}"] for k in (1, 2, 3)]
    for k, node in enumerate(nodes, start=1):
        assert node["environment"]["QDRANT__CLUSTER__ENABLED"] == "true"
        assert f"http://qdrant-node-{k}:6335" in node["command"]  # each peer says how it is reached
        assert "QDRANT_API_KEY" in node["environment"]["QDRANT__SERVICE__API_KEY"]
    assert "--bootstrap" not in nodes[0]["command"]
    for node in nodes[1:]:
        assert node["command"][node["command"].index("--bootstrap") + 1] == "http://qdrant-node-1:6335"
    api = services["api-production"]
    assert set(api["depends_on"]) == {"postgres", "qdrant-node-1", "qdrant-node-2", "qdrant-node-3"}
    env = api["environment"]
    assert env["REGISTRY_QDRANT_URL"] == "http://qdrant-node-1:6333"
    assert env["REGISTRY_QDRANT_SHARDS"].endswith(":-6}") and env["REGISTRY_QDRANT_REPLICAS"].endswith(":-2}")
    source = (ROOT / "registry" / "store" / "vectors_client.py").read_text()
    assert "REGISTRY_QDRANT_SHARDS" in source and "REGISTRY_QDRANT_REPLICAS" in source  # read when creating


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
