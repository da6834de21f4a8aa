"""docker-compose.yml: valid Compose, and wired the way the Ledger processes expect.

Checked by parsing (no Docker engine here): the file against the Compose Specification
JSON schema, then what the schema cannot know: health checks, start order, console
scripts, ports, volumes and the settings the processes read.
"""

# compose-spec.json is the Compose Specification's JSON schema ($id compose_spec.json,
# title "Compose Specification"; github.com/compose-spec/compose-spec, Apache License 2.0),
# copied byte for byte from the PyPI wheel check-jsonschema 0.39.0, file
# check_jsonschema/builtin_schemas/vendor/compose-spec.json (license alongside it in
# vendor/licenses/LICENSE.compose-spec). SCHEMA_SHA256 pins it.

from __future__ import annotations

import hashlib
import importlib
import json
import re
import tomllib
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
SCHEMA_FILE = Path(__file__).with_name("compose-spec.json")
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"

KURRENTDB_IMAGE = "docker.kurrent.io/kurrent-latest/kurrentdb:25.1"
MONGODB_IMAGE = "mongo:8"
# What each process needs, from command_server/app.py, projector/app.py, query_server/app.py.
# script: (gRPC port variable and default or None, (generated module, service), stores used)
PROCESSES: dict[str, tuple[tuple[str, int] | None, tuple[str, str] | None, set[str]]] = {
    "ledger-command-server": (
        ("LEDGER_COMMAND_PORT", 50051),
        ("ledger.v1.account_command_service_pb2", "AccountCommandService"),
        {"event"},
    ),
    "ledger-projector": (None, None, {"event", "view"}),
    "ledger-query-server": (
        ("LEDGER_QUERY_PORT", 50052),
        ("ledger.v1.account_query_service_pb2", "AccountQueryService"),
        {"view"},
    ),
}
DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+")

Service = dict[str, Any]


@cache
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def services() -> dict[str, Service]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def app_services() -> dict[str, Service]:
    """The services built from this repository's Dockerfile."""
    return {name: svc for name, svc in services().items() if "build" in svc}


@cache
def console_scripts() -> dict[str, str]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        scripts: dict[str, str] = tomllib.load(f)["project"]["scripts"]
    return scripts


def script_of(service: Service) -> str:
    command = service.get("command")
    assert isinstance(command, list), f"command must be exec form (a list), got {command!r}"
    assert command, "empty command"
    return str(command[0])


def environment(service: Service) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def seconds(duration: str) -> float:
    assert DURATION.fullmatch(duration), f"{duration!r} is not a Compose duration"
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(
        float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", duration)
    )


def published(service: Service) -> list[tuple[str, int, int]]:
    """(host ip, published port, container port) for each of the service's ports."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
        else:
            *host, pub, target = str(port).split(":")
            out.append((":".join(host), int(pub), int(target.split("/")[0])))
    return out


def healthcheck_argv(service: Service) -> list[str]:
    test = service["healthcheck"]["test"]
    assert isinstance(test, list), "healthcheck test must be a list"
    assert test[0] == "CMD", f"exec form (CMD) expected, no shell: {test}"
    return [str(word) for word in test[1:]]


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


# -- the schema ---------------------------------------------------------------------


@cache
def schema() -> dict[str, Any]:
    raw = SCHEMA_FILE.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SCHEMA_SHA256, "the vendored schema was edited"
    loaded = json.loads(raw)
    assert isinstance(loaded, dict)
    return loaded


def validate(document: dict[str, Any]) -> list[str]:
    validator_class = jsonschema.validators.validator_for(schema())
    validator_class.check_schema(schema())
    validator = validator_class(schema())
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    ]


def test_schema_is_the_compose_specification() -> None:
    assert schema()["title"] == "Compose Specification"
    assert schema()["$id"] == "compose_spec.json"


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    assert validate(compose()) == []


def test_schema_rejects_what_compose_rejects() -> None:
    """The validation has teeth: a misspelt key or a wrong type is an error."""
    bad = json.loads(json.dumps(compose()))
    bad["services"]["mongodb"]["helthcheck"] = bad["services"]["mongodb"].pop("healthcheck")
    bad["services"]["kurrentdb"]["restart"] = True
    errors = validate(bad)
    assert any("helthcheck" in e for e in errors), errors
    assert any(e.startswith("services/kurrentdb/restart") for e in errors), errors


# -- health and start order ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(services()))
def test_every_service_has_a_healthcheck(name: str) -> None:
    service = services()[name]
    check = service.get("healthcheck")
    assert check, f"{name} has no healthcheck"
    assert not check.get("disable"), f"{name} disables its healthcheck"
    assert healthcheck_argv(service), f"{name}: empty healthcheck"
    for key in ("interval", "timeout", "start_period", "start_interval"):
        if key in check:
            seconds(check[key])
    assert seconds(check["timeout"]) <= seconds(check["interval"])


@pytest.mark.parametrize("name", sorted(services()))
def test_every_service_restarts(name: str) -> None:
    assert services()[name].get("restart") in {"always", "unless-stopped", "on-failure"}


@pytest.mark.parametrize("name", sorted(services()))
def test_depends_on_waits_for_healthy(name: str) -> None:
    depends = services()[name].get("depends_on", {})
    assert isinstance(depends, dict), f"{name}: depends_on as a list waits for nothing"
    for dependency, how in depends.items():
        assert dependency in services(), f"{name} depends on unknown {dependency}"
        assert how.get("condition") == "service_healthy", f"{name} -> {dependency}: {how}"
        assert "healthcheck" in services()[dependency]


def test_store_images_and_checks() -> None:
    kurrentdb, mongodb = services()["kurrentdb"], services()["mongodb"]
    assert kurrentdb["image"] == KURRENTDB_IMAGE
    assert healthcheck_argv(kurrentdb)[0] == "curl"
    assert "http://localhost:2113/health/live" in healthcheck_argv(kurrentdb)
    env = environment(kurrentdb)
    assert env["KURRENTDB_CLUSTER_SIZE"] == "1"
    assert env["KURRENTDB_INSECURE"] == "true"
    assert mongodb["image"] == MONGODB_IMAGE
    assert healthcheck_argv(mongodb)[0] == "mongosh"
    assert any("ping" in word for word in healthcheck_argv(mongodb))


# -- the application services --------------------------------------------------------


def test_each_process_is_deployed_once_from_this_repository() -> None:
    scripts = sorted(script_of(svc) for svc in app_services().values())
    assert scripts == sorted(PROCESSES)
    for name, service in app_services().items():
        build = service["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert (REPO_ROOT / context / dockerfile).is_file(), f"{name}: no {dockerfile}"
        if isinstance(build, dict) and "target" in build:
            text = (REPO_ROOT / context / dockerfile).read_text(encoding="utf-8")
            stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.MULTILINE | re.IGNORECASE)
            assert build["target"] in stages, f"{name}: no stage {build['target']}"


@pytest.mark.parametrize("name", sorted(app_services()))
def test_command_is_a_console_script_of_pyproject(name: str) -> None:
    script = script_of(app_services()[name])
    assert script in console_scripts(), f"{name}: {script} is not in [project.scripts]"


@pytest.mark.parametrize("script", sorted(console_scripts()))
def test_console_script_entry_points_resolve(script: str) -> None:
    module_name, _, attribute = console_scripts()[script].partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    assert callable(target), f"{script} -> {console_scripts()[script]} is not callable"


@pytest.mark.parametrize("name", sorted(app_services()))
def test_grpc_ports_health_checks_and_settings_agree(name: str) -> None:
    service = app_services()[name]
    grpc_port, grpc_service, _ = PROCESSES[script_of(service)]
    env = environment(service)
    argv = healthcheck_argv(service)
    assert argv[:3] == ["python", "-m", "ledger.healthcheck"], argv
    if grpc_port is None:  # the projector
        assert "--projector" in argv
        assert published(service) == []
        return
    variable, default = grpc_port
    port = int(env.get(variable, default))
    assert port == default, f"{name}: {variable}={port}, documented as {default}"
    assert option(argv, "--port") == str(port), f"{name}: health check asks another port"
    assert grpc_service is not None
    module, short_name = grpc_service
    descriptor = importlib.import_module(module).DESCRIPTOR.services_by_name[short_name]
    service_name = descriptor.full_name
    assert option(argv, "--service") in (None, service_name), argv
    assert published(service) == [("127.0.0.1", port, port)], (
        f"{name}: publish {port} on the host's loopback (plaintext, unauthenticated gRPC)"
    )


@pytest.mark.parametrize("name", sorted(app_services()))
def test_servers_listen_on_every_interface_of_the_container(name: str) -> None:
    assert environment(app_services()[name]).get("LEDGER_BIND_HOST") == "0.0.0.0"


@pytest.mark.parametrize("name", sorted(app_services()))
def test_stores_are_reached_by_service_name_and_awaited(name: str) -> None:
    service = app_services()[name]
    env = environment(service)
    _, _, stores = PROCESSES[script_of(service)]
    depends = set(service.get("depends_on", {}))
    if "event" in stores:
        assert env.get("LEDGER_EVENT_STORE") == "kurrentdb"
        uri = urlsplit(env["KURRENTDB_URI"])
        assert uri.scheme in {"kurrentdb", "esdb", "kdb"}
        assert uri.hostname in services(), f"{name}: {uri.hostname} is not a service"
        assert uri.hostname in depends, f"{name} does not wait for {uri.hostname}"
        insecure = environment(services()[uri.hostname]).get("KURRENTDB_INSECURE") == "true"
        assert parse_qs(uri.query).get("tls") == (["false"] if insecure else None)
    if "view" in stores:
        assert env.get("LEDGER_VIEW_STORE") == "mongodb"
        uri = urlsplit(env["MONGODB_URI"])
        assert uri.scheme == "mongodb"
        assert uri.hostname in services(), f"{name}: {uri.hostname} is not a service"
        assert uri.hostname in depends, f"{name} does not wait for {uri.hostname}"
        assert env.get("LEDGER_MONGODB_DATABASE")


@pytest.mark.parametrize("name", sorted(app_services()))
def test_settings_are_accepted_by_the_process(name: str) -> None:
    """The process's own settings code takes the compose environment (nothing connects)."""
    from ledger import backends, settings

    service = app_services()[name]
    env = environment(service)
    grpc_port, _, stores = PROCESSES[script_of(service)]
    if grpc_port is not None:
        settings.port(env, *grpc_port)
        settings.shutdown_grace(env)
    assert settings.bind_host(env) == "0.0.0.0"
    if "event" in stores:
        event_store = backends.event_store_from_env(env)
        assert type(event_store).__name__ == "KurrentDBEventStore"
    if "view" in stores:
        view_store = backends.view_store_from_env(env)
        assert type(view_store).__name__ == "MongoViewStore"


@pytest.mark.parametrize("name", sorted(app_services()))
def test_docker_waits_longer_than_the_shutdown_grace(name: str) -> None:
    service = app_services()[name]
    grace = float(environment(service).get("LEDGER_SHUTDOWN_GRACE_SECONDS", "10"))
    stop_after = seconds(service.get("stop_grace_period", "10s"))
    assert stop_after > grace, f"{name}: SIGKILL after {stop_after}s cuts a {grace}s drain short"


# -- volumes ---------------------------------------------------------------------------


def named_volumes(service: Service) -> dict[str, str]:
    """Named volume -> mount path (bind mounts and anonymous volumes left out)."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type", "volume") == "volume" and volume.get("source"):
                out[volume["source"]] = volume["target"]
        else:
            source, _, target = str(volume).partition(":")
            if target and not source.startswith((".", "/", "~", "$")):
                out[source] = target.split(":")[0]
    return out


def test_named_volumes_are_declared_and_used() -> None:
    declared = set(compose().get("volumes") or {})
    used = {v for svc in services().values() for v in named_volumes(svc)}
    assert used <= declared, f"undeclared: {used - declared}"
    assert declared <= used, f"declared but unused: {declared - used}"


def test_store_data_lives_in_named_volumes() -> None:
    assert "/var/lib/kurrentdb" in named_volumes(services()["kurrentdb"]).values()
    assert "/data/db" in named_volumes(services()["mongodb"]).values()
