"""Static checks of docker-compose.yaml, .env.example and the files they use.

There is no Docker engine (and no GPU) on the development machine, so the stack is checked by
parsing it. What is checked:

* every required service exists, the executor is CeleryExecutor, every service has a health check
  or is a one-shot job that others wait for (``service_completed_successfully``), long-running
  services restart, ``depends_on`` targets exist and their conditions fit them, named volumes
  are declared, build contexts / mounted files exist;
* **endpoints**: for the URL or host:port settings handed to the Airflow containers (the
  LABELLOOP_* ones listed in ``LABELLOOP_ENDPOINTS``, Airflow's own DB/broker/execution-API URLs
  and every ``AIRFLOW_CONN_*``), the host must be a service of this file and the port must be
  given explicitly and be one the service listens on. "Listens on" means the service's
  ``expose:`` list; separately, each service's published container ports, ``--port`` arguments
  and ``localhost:PORT`` health-check URLs must be in that list, so ``expose`` cannot drift from
  what the container really opens;
* every ``${VAR}`` in the file is documented (with a comment) in .env.example, in particular the
  ones without a default, and .env.example lists nothing the file does not use;
* every LABELLOOP_* name is a field of ``labelloop.config.Settings`` (walked recursively via
  ``iter_setting_docs``), and the Airflow environment, interpolated with .env.example's values,
  loads into ``Settings`` with the intended values;
* cross-service agreements: vLLM's served name and resize bounds equal labelloop's settings,
  Label Studio's token is labelloop's token, database names/roles match docker/postgres/init.sql.

The ``*_problems`` functions return a list of messages; tests assert it is empty for the real
file and non-empty for deliberately broken copies, so the checks are shown to be able to fail.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from labelloop.config import CONFIG_FILE_ENV, Settings, VLLMSettings, iter_setting_docs
from labelloop.db.migrate import MIGRATIONS_ENV

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
PG_INIT_SQL = REPO / "docker" / "postgres" / "init.sql"
AIRFLOW_DOCKERFILE = REPO / "docker" / "Dockerfile.airflow"

REQUIRED_SERVICES = {
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
    "redis",
    "postgres",
    "minio",
    "minio-init",
    "label-studio",
    "vllm",
    "mineru-api",
}
AIRFLOW_SERVICES = sorted(s for s in REQUIRED_SERVICES if s.startswith("airflow-"))

# LABELLOOP_* settings that hold a URL or host:port of another service of the stack.
LABELLOOP_ENDPOINTS = {
    "LABELLOOP_DB__URL",
    "LABELLOOP_STORAGE__ENDPOINT",
    "LABELLOOP_VLLM__BASE_URL",
    "LABELLOOP_MINERU__API_URL",
    "LABELLOOP_LABEL_STUDIO__URL",
}
# Airflow's own endpoints in the common environment.
AIRFLOW_ENDPOINTS = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
}
REQUIRED_CONNECTIONS = {
    "AIRFLOW_CONN_LABELLOOP_DB": "postgres",
    "AIRFLOW_CONN_LABELLOOP_S3": "aws",
    "AIRFLOW_CONN_LABEL_STUDIO": "http",
    "AIRFLOW_CONN_VLLM": "http",
    "AIRFLOW_CONN_MINERU": "http",
}
# Endpoints that are deliberately not compose services: browser-facing addresses.
NOT_A_SERVICE = {"LABELLOOP_STORAGE__PUBLIC_ENDPOINT"}
# LABELLOOP_* variables read outside Settings.
LABELLOOP_NON_SETTINGS = {CONFIG_FILE_ENV, MIGRATIONS_ENV}


# ----------------------------------------------------------------------------- interpolation

# $$ (escape), ${NAME}, ${NAME<op>arg} with op in :- - :? ? :+ +, and bare $NAME.
_VAR_RE = re.compile(
    r"\$(?:(?P<escape>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def iter_strings(node: Any) -> Iterator[str]:
    """Every string (keys and values) in a parsed YAML tree; comments are not part of it."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for k, v in node.items():
            yield from iter_strings(k)
            yield from iter_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from iter_strings(v)


def variable_refs(text: str) -> list[tuple[str, str | None]]:
    """(name, operator) of every compose variable reference in ``text``."""
    refs = []
    for m in _VAR_RE.finditer(text):
        if m.group("escape"):
            continue
        refs.append((m.group("braced") or m.group("bare"), m.group("op")))
    return refs


def interpolate(text: str, env: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group("escape"):
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        if op in (":-", "-"):
            return value if (value if op == ":-" else value is not None) else arg
        if op in (":?", "?"):
            if value is None or (op == ":?" and value == ""):
                raise KeyError(f"required variable {name} is not set: {arg}")
            return value
        if op in (":+", "+"):
            return arg if (value if op == ":+" else value is not None) else ""
        return value or ""

    return _VAR_RE.sub(sub, text)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, Mapping):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    return node


def parse_env_example(text: str) -> tuple[dict[str, str], set[str]]:
    """(values, names with a comment line directly above them or above their block)."""
    values: dict[str, str] = {}
    documented: set[str] = set()
    prev = ""
    for raw in text.splitlines():
        line = raw.strip()
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", line)
        if m:
            values[m.group(1)] = m.group(2)
            if prev.startswith("#"):
                documented.add(m.group(1))
        prev = line
    return values, documented


# ----------------------------------------------------------------------------- compose helpers


def env_dict(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def exposed_ports(service: Mapping[str, Any]) -> set[int]:
    return {int(str(p).split("/")[0]) for p in service.get("expose") or []}


def published_container_ports(service: Mapping[str, Any]) -> set[int]:
    ports = set()
    for p in service.get("ports") or []:
        target = p.get("target") if isinstance(p, Mapping) else str(p).rsplit(":", 1)[-1]
        ports.add(int(str(target).split("/")[0]))
    return ports


def command_list(service: Mapping[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def script_text(service: Mapping[str, Any]) -> str:
    cmd = service.get("command") or ""
    return cmd if isinstance(cmd, str) else "\n".join(str(c) for c in cmd)


def flag_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def healthcheck_test(service: Mapping[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test") or []
    return test if isinstance(test, str) else " ".join(str(t) for t in test)


def host_port(value: str) -> tuple[str, int | None]:
    """Host and explicit port of a URL (any scheme, incl. ``db+postgresql``) or ``host:port``."""
    if "://" in value:
        parts = urlsplit(value)
        return parts.hostname or "", parts.port
    host, _, port = value.partition(":")
    return host, int(port) if port.isdigit() else None


def connection_endpoints(value: str) -> list[tuple[str, str, int | None]]:
    """(what, host, port) of an Airflow connection given as JSON or as a URI."""
    try:
        conn = json.loads(value)
    except json.JSONDecodeError:
        host, port = host_port(value)
        return [("uri", host, port)]
    out: list[tuple[str, str, int | None]] = []
    if conn.get("host"):
        out.append(("host", conn["host"], conn.get("port")))
    extra = conn.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra)
    if extra.get("endpoint_url"):
        out.append(("extra.endpoint_url", *host_port(extra["endpoint_url"])))
    return out


def one_shot_services(compose: Mapping[str, Any]) -> set[str]:
    """Services some other service waits for with condition service_completed_successfully."""
    waited = set()
    for svc in compose["services"].values():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, Mapping):
            for name, spec in deps.items():
                if (spec or {}).get("condition") == "service_completed_successfully":
                    waited.add(name)
    return waited


# ----------------------------------------------------------------------------- problem finders


def structure_problems(compose: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    services = compose.get("services") or {}
    for name in sorted(REQUIRED_SERVICES - set(services)):
        problems.append(f"required service {name!r} is missing")
    one_shots = one_shot_services(compose)
    declared_volumes = set(compose.get("volumes") or {})
    for name, svc in services.items():
        has_health = bool(svc.get("healthcheck")) and not svc["healthcheck"].get("disable")
        restart = svc.get("restart")
        if name in one_shots:
            if has_health:
                problems.append(f"{name}: a one-shot job should not have a healthcheck")
            if restart not in (None, "no"):
                problems.append(f"{name}: a one-shot job must not restart (restart: {restart!r})")
        elif not has_health:
            problems.append(f"{name}: no healthcheck and not a one-shot job others wait for")
        elif restart not in ("always", "unless-stopped", "on-failure"):
            problems.append(f"{name}: long-running service without a restart policy")
        deps = svc.get("depends_on") or {}
        if not isinstance(deps, Mapping):
            problems.append(f"{name}: depends_on must use the long form with conditions")
            deps = {}
        for dep, spec in deps.items():
            cond = (spec or {}).get("condition")
            if dep not in services:
                problems.append(f"{name}: depends_on unknown service {dep!r}")
                continue
            if cond is None:
                problems.append(f"{name}: depends_on {dep!r} without a condition")
            elif cond == "service_healthy" and not services[dep].get("healthcheck"):
                problems.append(f"{name}: waits for {dep!r} to be healthy but it has no healthcheck")
        for vol in svc.get("volumes") or []:
            source = vol.get("source") if isinstance(vol, Mapping) else str(vol).split(":", 1)[0]
            if source and not source.startswith((".", "/", "$", "~")) and source not in declared_volumes:
                problems.append(f"{name}: named volume {source!r} is not declared under volumes:")
            if source and source.startswith("./docker/") and not (REPO / source).exists():
                problems.append(f"{name}: mounted file {source} does not exist")
        build = svc.get("build")
        if build:
            context = REPO / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not (context / dockerfile).is_file():
                problems.append(f"{name}: build file {context / dockerfile} does not exist")
    return problems


def port_problems(compose: Mapping[str, Any]) -> list[str]:
    """``expose`` must cover published ports, --port arguments and localhost health-check ports."""
    problems = []
    for name, svc in compose["services"].items():
        exposed = exposed_ports(svc)
        for port in published_container_ports(svc) - exposed:
            problems.append(f"{name}: publishes container port {port} that is not in expose")
        port_arg = flag_value(command_list(svc), "--port")
        if port_arg is not None and int(port_arg) not in exposed:
            problems.append(f"{name}: listens on --port {port_arg} which is not in expose")
        for port in re.findall(r"localhost:(\d+)", healthcheck_test(svc)):
            if int(port) not in exposed:
                problems.append(f"{name}: healthcheck probes port {port} which is not in expose")
    return problems


def endpoint_problems(compose: Mapping[str, Any]) -> list[str]:
    """Every endpoint handed to the Airflow containers names a service and a port it listens on."""
    services = compose["services"]
    env = env_dict(compose["x-airflow-common"])
    problems = []

    def check(label: str, host: str, port: int | None) -> None:
        if host not in services:
            problems.append(f"{label}: host {host!r} is not a service of docker-compose.yaml")
        elif port is None:
            problems.append(f"{label}: no explicit port")
        elif port not in exposed_ports(services[host]):
            problems.append(
                f"{label}: port {port} is not one {host!r} listens on {sorted(exposed_ports(services[host]))}"
            )

    for var in sorted(LABELLOOP_ENDPOINTS | AIRFLOW_ENDPOINTS):
        if var not in env:
            problems.append(f"{var} is missing from the Airflow environment")
            continue
        check(var, *host_port(env[var]))
    for var in sorted(REQUIRED_CONNECTIONS):
        if var not in env:
            problems.append(f"{var} is missing from the Airflow environment")
    for var, value in sorted(env.items()):
        if var.startswith("AIRFLOW_CONN_"):
            endpoints = connection_endpoints(value)
            if not endpoints:
                problems.append(f"{var}: no host")
            for what, host, port in endpoints:
                check(f"{var} ({what})", host, port)
        elif (
            var.startswith("LABELLOOP_")
            and var not in LABELLOOP_ENDPOINTS | NOT_A_SERVICE
            and re.search(r"://|^[\w.-]+:\d+$", value)
        ):
            problems.append(f"{var} looks like an endpoint; add it to LABELLOOP_ENDPOINTS or NOT_A_SERVICE")
    return problems


def variable_problems(compose: Mapping[str, Any], env_example: str) -> list[str]:
    values, documented = parse_env_example(env_example)
    refs = [ref for s in iter_strings(compose) for ref in variable_refs(s)]
    used = {name for name, _ in refs}
    problems = []
    for name in sorted({n for n, op in refs if op in (None, ":?", "?")} - set(values)):
        problems.append(f"${{{name}}} has no default and is not listed in .env.example")
    for name in sorted(used - set(values)):
        problems.append(f"${{{name}}} is not listed in .env.example")
    for name in sorted(set(values) - documented):
        problems.append(f".env.example: {name} has no comment above it")
    for name in sorted(set(values) - used):
        problems.append(f".env.example: {name} is not used by docker-compose.yaml")
    return problems


def settings_name_problems(compose: Mapping[str, Any]) -> list[str]:
    valid = {name for name, _, _ in iter_setting_docs()} | LABELLOOP_NON_SETTINGS
    names = set()
    for svc in [compose.get("x-airflow-common") or {}, *compose["services"].values()]:
        names |= {k for k in env_dict(svc) if k.startswith("LABELLOOP_")}
    for s in iter_strings(compose):
        names |= set(re.findall(r"\bLABELLOOP_[A-Z0-9_]+", s))
    return [f"{n} is not a field of labelloop.config.Settings" for n in sorted(names - valid)]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def env_example_text() -> str:
    return ENV_EXAMPLE.read_text()


@pytest.fixture(scope="module")
def resolved(compose: dict[str, Any], env_example_text: str) -> dict[str, Any]:
    """The compose file as `docker compose config` would see it with .env = .env.example."""
    values, _ = parse_env_example(env_example_text)
    return interpolate_tree(compose, values)


@pytest.fixture(scope="module")
def airflow_env(resolved: dict[str, Any]) -> dict[str, str]:
    return env_dict(resolved["x-airflow-common"])


def renamed_service(compose: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    broken = copy.deepcopy(compose)
    broken["services"][new] = broken["services"].pop(old)
    return broken


# ----------------------------------------------------------------------------- tests: structure


def test_not_run_notice_at_top() -> None:
    head = COMPOSE_FILE.read_text().split("---", 1)[0].lower()
    assert "could not be" in head and "no docker engine" in head and "no gpu" in head
    assert "tests/test_compose.py" in head


def test_structure(compose: dict[str, Any]) -> None:
    assert structure_problems(compose) == []


def test_structure_checks_can_fail(compose: dict[str, Any]) -> None:
    assert any("'vllm' is missing" in p for p in structure_problems(renamed_service(compose, "vllm", "llm")))
    broken = copy.deepcopy(compose)
    del broken["services"]["label-studio"]["healthcheck"]
    assert any(p.startswith("label-studio: no healthcheck") for p in structure_problems(broken))
    broken = copy.deepcopy(compose)
    broken["services"]["minio"]["volumes"] = ["undeclared-volume:/data"]
    assert any("undeclared-volume" in p for p in structure_problems(broken))


def test_executor_is_celery(compose: dict[str, Any]) -> None:
    env = env_dict(compose["x-airflow-common"])
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert env["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
    assert compose["services"]["airflow-worker"]["command"].split()[:2] == ["celery", "worker"]


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_airflow_services_share_the_common_block(compose: dict[str, Any], service: str) -> None:
    svc = compose["services"][service]
    common = compose["x-airflow-common"]
    assert svc["image"] == common["image"]
    # YAML merge keys: worker and init extend the environment, they must not drop any of it.
    assert env_dict(common).items() <= env_dict(svc).items()


def test_airflow_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "/api/v2/monitor/health" in healthcheck_test(services["airflow-apiserver"])
    assert ":8974/health" in healthcheck_test(services["airflow-scheduler"])
    assert "DagProcessorJob" in healthcheck_test(services["airflow-dag-processor"])
    assert "TriggererJob" in healthcheck_test(services["airflow-triggerer"])
    assert "inspect ping" in healthcheck_test(services["airflow-worker"])


def test_airflow_init_migrates_and_creates_the_admin(resolved: dict[str, Any]) -> None:
    compose = resolved
    init = compose["services"]["airflow-init"]
    script = script_text(init)
    env = env_dict(init)
    assert "airflow db migrate" in script
    assert "SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in script and "_ADMIN_PASSWORD" in env
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("SimpleAuthManager")
    admin = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(":")
    assert admin == [env["_ADMIN_USERNAME"], "admin"]
    # The password file lives on a volume the API server also mounts.
    auth_dir = str(Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).parent)
    assert any(v.split(":")[1] == auth_dir for v in compose["services"]["airflow-apiserver"]["volumes"])
    assert "Database(Settings().db).upgrade()" in script  # curation DB migrated too
    for service in AIRFLOW_SERVICES:
        if service != "airflow-init":
            deps = compose["services"][service]["depends_on"]
            assert deps["airflow-init"]["condition"] == "service_completed_successfully", service


def test_code_is_mounted_and_importable(compose: dict[str, Any]) -> None:
    common = compose["x-airflow-common"]
    env = env_dict(common)
    mounts = {v.split(":")[0]: v.split(":")[1] for v in common["volumes"]}
    pythonpath = env["PYTHONPATH"]
    for folder in ("dags", "operators", "labelloop", "sql"):  # label configs are package data in labelloop/
        assert mounts.get(f"./{folder}") == f"{pythonpath}/{folder}", folder
    assert "./label_config" not in mounts
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == mounts["./dags"]
    dockerfile = AIRFLOW_DOCKERFILE.read_text()
    assert re.search(r"^FROM apache/airflow:3\.3\.2-python3\.11\s*$", dockerfile, re.M)
    assert "-r /opt/labelloop/requirements/lock.txt" in dockerfile
    assert f"pip install --no-cache-dir --no-deps -e {pythonpath}" in dockerfile
    assert re.search(r"^COPY .*\bsetup\.py\b.* /opt/labelloop/", dockerfile, re.M)  # the package layout
    assert (REPO / "requirements" / "lock.txt").is_file()


# ----------------------------------------------------------------------------- tests: endpoints


def test_ports_match_expose(compose: dict[str, Any]) -> None:
    assert port_problems(compose) == []


def test_port_checks_can_fail(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["vllm"]["expose"] = ["8001"]
    found = port_problems(broken)
    assert any("--port 8000" in p for p in found) and any("publishes container port 8000" in p for p in found)


def test_endpoints_name_services_and_ports(resolved: dict[str, Any]) -> None:
    assert endpoint_problems(resolved) == []


@pytest.mark.parametrize(
    ("old", "new", "var"),
    [
        ("minio", "object-store", "LABELLOOP_STORAGE__ENDPOINT"),
        ("vllm", "vllm-server", "LABELLOOP_VLLM__BASE_URL"),
        ("mineru-api", "mineru", "LABELLOOP_MINERU__API_URL"),
        ("label-studio", "labelstudio", "LABELLOOP_LABEL_STUDIO__URL"),
        ("postgres", "db", "LABELLOOP_DB__URL"),
    ],
)
def test_endpoint_check_fails_when_a_service_is_renamed(resolved: dict[str, Any], old: str, new: str, var: str) -> None:
    found = endpoint_problems(renamed_service(resolved, old, new))
    assert any(p.startswith(f"{var}: host {old!r}") for p in found)


def test_endpoint_check_fails_on_a_wrong_port(resolved: dict[str, Any]) -> None:
    broken = copy.deepcopy(resolved)
    broken["x-airflow-common"]["environment"]["LABELLOOP_LABEL_STUDIO__URL"] = "http://label-studio:8000"
    assert any("LABELLOOP_LABEL_STUDIO__URL: port 8000" in p for p in endpoint_problems(broken))
    broken["x-airflow-common"]["environment"]["LABELLOOP_VLLM__BASE_URL"] = "http://vllm/v1"
    assert any("LABELLOOP_VLLM__BASE_URL: no explicit port" in p for p in endpoint_problems(broken))


def test_connections(airflow_env: dict[str, str]) -> None:
    for var, conn_type in REQUIRED_CONNECTIONS.items():
        conn = json.loads(airflow_env[var])
        assert conn["conn_type"] == conn_type, var
    s3 = json.loads(airflow_env["AIRFLOW_CONN_LABELLOOP_S3"])
    assert s3["extra"]["config_kwargs"]["s3"]["addressing_style"] == "path"  # needed for minio:9000
    assert s3["login"] == airflow_env["LABELLOOP_STORAGE__ACCESS_KEY"]
    assert s3["password"] == airflow_env["LABELLOOP_STORAGE__SECRET_KEY"]
    ls = json.loads(airflow_env["AIRFLOW_CONN_LABEL_STUDIO"])
    assert ls["extra"]["Authorization"] == f"Token {airflow_env['LABELLOOP_LABEL_STUDIO__TOKEN']}"
    vllm = json.loads(airflow_env["AIRFLOW_CONN_VLLM"])
    assert vllm["extra"]["Authorization"] == f"Bearer {airflow_env['LABELLOOP_VLLM__API_KEY']}"
    db = json.loads(airflow_env["AIRFLOW_CONN_LABELLOOP_DB"])
    url = urlsplit(airflow_env["LABELLOOP_DB__URL"])
    assert (db["login"], db["password"], db["schema"]) == (url.username, url.password, url.path.lstrip("/"))


# ----------------------------------------------------------------------------- tests: variables


def test_variables_documented(compose: dict[str, Any], env_example_text: str) -> None:
    assert variable_problems(compose, env_example_text) == []


def test_variable_check_can_fail(compose: dict[str, Any], env_example_text: str) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["redis"]["environment"] = {"REDIS_PASSWORD": "${REDIS_PASSWORD:?}"}
    assert any("REDIS_PASSWORD} has no default" in p for p in variable_problems(broken, env_example_text))
    undocumented = env_example_text.replace("# Password of that admin.\n", "")
    assert any("AIRFLOW_ADMIN_PASSWORD has no comment" in p for p in variable_problems(compose, undocumented))


def test_interpolation_helper() -> None:
    env = {"A": "1", "E": ""}
    assert interpolate("${A}-${B:-x}-${E:-y}-${E-z}-$${A}-$A", env) == "1-x-y--${A}-1"
    with pytest.raises(KeyError):
        interpolate("${B:?needed}", env)
    assert variable_refs("$${X} ${Y:?m} ${Z:-d} $W") == [("Y", ":?"), ("Z", ":-"), ("W", None)]


# ----------------------------------------------------------------------------- tests: settings


def test_labelloop_names_are_settings_fields(compose: dict[str, Any]) -> None:
    assert settings_name_problems(compose) == []


def test_settings_name_check_can_fail(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["x-airflow-common"]["environment"]["LABELLOOP_VLLM__BASEURL"] = "http://vllm:8000/v1"
    assert settings_name_problems(broken) == ["LABELLOOP_VLLM__BASEURL is not a field of labelloop.config.Settings"]


def test_airflow_env_loads_into_settings(airflow_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("LABELLOOP_"):
            monkeypatch.delenv(key)
    for key, value in airflow_env.items():
        if key.startswith("LABELLOOP_"):
            monkeypatch.setenv(key, value)
    s = Settings()
    assert s.db.url_value.startswith("postgresql+psycopg://labelloop:")
    assert s.storage.backend == "s3" and s.storage.endpoint == "minio:9000" and not s.storage.secure
    assert s.storage.public_endpoint
    assert s.vllm.base_url == "http://vllm:8000/v1"
    assert s.mineru.mode == "http" and s.mineru.api_url == "http://mineru-api:8000"
    assert s.label_studio.url == "http://label-studio:8080"
    assert s.label_studio.media_mode == "s3"
    assert s.label_studio.token.get_secret_value() == airflow_env["LABELLOOP_LABEL_STUDIO__TOKEN"] != ""


# ----------------------------------------------------------------------------- tests: services


def test_vllm_agrees_with_labelloop(resolved: dict[str, Any], airflow_env: dict[str, str]) -> None:
    vllm = resolved["services"]["vllm"]
    args = command_list(vllm)
    assert vllm["image"].startswith("vllm/vllm-openai:")
    assert args[0] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert flag_value(args, "--served-model-name") == airflow_env["LABELLOOP_VLLM__MODEL"]
    assert flag_value(args, "--api-key") == airflow_env["LABELLOOP_VLLM__API_KEY"]
    assert json.loads(flag_value(args, "--limit-mm-per-prompt")) == {"image": 1, "video": 0}
    mm = json.loads(flag_value(args, "--mm-processor-kwargs"))
    assert mm == {
        "min_pixels": int(airflow_env["LABELLOOP_VLLM__MIN_PIXELS"]),
        "max_pixels": int(airflow_env["LABELLOOP_VLLM__MAX_PIXELS"]),
    }
    top_logprobs_cap = next(m.le for m in VLLMSettings.model_fields["top_logprobs"].metadata if hasattr(m, "le"))
    assert int(flag_value(args, "--max-logprobs")) >= top_logprobs_cap
    assert "/health" in healthcheck_test(vllm)
    assert any(v.endswith(":/root/.cache/huggingface") for v in vllm["volumes"])


@pytest.mark.parametrize(("service", "required"), [("vllm", True), ("mineru-api", False)])
def test_gpu_reservation(compose: dict[str, Any], service: str, required: bool) -> None:
    deploy = compose["services"][service].get("deploy")
    if deploy is None and not required:
        return
    devices = deploy["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_mineru_api_build(resolved: dict[str, Any]) -> None:
    """The image runs MinerU 4.0.12's own API server at the tier whose models it bakes in, and is
    checked on its 4.x health route (the names are MinerU 4.0.12's, read from the wheel in
    .venv-mineru: extras, `mineru-kit models download`, `mineru-api --tier`, `/v1/health`)."""
    svc = resolved["services"]["mineru-api"]
    dockerfile = (REPO / svc["build"]["context"] / svc["build"].get("dockerfile", "Dockerfile")).read_text()
    assert re.search(r"^FROM python:3\.1[0-4]", dockerfile, re.M)  # mineru 4.x: Python >=3.10,<3.15
    pins = re.findall(r'pip install "mineru\[(\w+)\]==([\d.]+)"', dockerfile)
    assert pins == [("torch", "4.0.12")]  # 4.x has no `core` extra; `torch` runs the basic tier
    # The version labelloop records with MinerU predictions is the one the image installs.
    assert env_dict(resolved["x-airflow-common"])["LABELLOOP_MINERU__VERSION"] == pins[0][1]
    assert svc["image"].endswith(f":{pins[0][1]}")
    download = re.search(r"^RUN mineru-kit models download (.+)$", dockerfile, re.M)
    assert download, "the image must bake in MinerU's models"
    dl = shlex.split(download.group(1))
    assert flag_value(dl, "-s") in ("huggingface", "modelscope")
    # the backend the server runs is the one whose models were downloaded (MinerU's `auto` would pick
    # onnx on a CPU-only host and fetch other models)
    assert re.search(rf"MINERU_MODEL_SMALL_BACKEND={flag_value(dl, '--small-backend')}\b", dockerfile)
    assert "MINERU_MODEL_SOURCE=local" in dockerfile and env_dict(svc)["MINERU_MODEL_SOURCE"] == "local"
    args = command_list(svc)
    assert args[0] == "mineru-api" and flag_value(args, "--host") == "0.0.0.0"
    # the server's tier is the one whose models were downloaded (else it would fetch them at run time)
    assert flag_value(args, "--tier") == flag_value(dl, "--tier") == "basic"
    docker_cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    assert docker_cmd == args  # the image runs the same command on its own
    assert "localhost:8000/v1/health" in healthcheck_test(svc)
    assert "localhost:8000/v1/health" in dockerfile  # the image's own HEALTHCHECK
    assert "openapi.json" not in healthcheck_test(svc) + dockerfile


def test_mineru_image_names_exist_in_the_installed_mineru(resolved: dict[str, Any]) -> None:
    """The extra, console scripts, options and route the image uses are those of the MinerU wheel
    the tests run for real (.venv-mineru, pinned to the same version), read from its files."""
    venv = REPO / ".venv-mineru"
    dist = sorted(venv.glob("lib/python*/site-packages/mineru-*.dist-info"))
    if not dist:
        pytest.skip("no .venv-mineru (scripts/ensure-mineru.sh builds it)")
    site = dist[0].parent
    svc = resolved["services"]["mineru-api"]
    dockerfile = (REPO / svc["build"]["context"] / "Dockerfile").read_text()
    (extra, version), *_ = re.findall(r'pip install "mineru\[(\w+)\]==([\d.]+)"', dockerfile)
    assert dist[0].name == f"mineru-{version}.dist-info"
    meta = (dist[0] / "METADATA").read_text()
    assert f"Provides-Extra: {extra}" in meta
    scripts = (dist[0] / "entry_points.txt").read_text()
    assert re.search(r"^mineru-api = ", scripts, re.M) and re.search(r"^mineru-kit = ", scripts, re.M)
    api_cli = (site / "mineru" / "kit" / "commands" / "api_server.py").read_text()
    for flag in ("--host", "--port", "--tier"):
        assert f'"{flag}"' in api_cli, flag
    models_cli = (site / "mineru" / "kit" / "commands" / "models.py").read_text()
    dl = shlex.split(re.search(r"^RUN mineru-kit models download (.+)$", dockerfile, re.M).group(1))
    for flag in (a for a in dl if a.startswith("-")):
        assert f'"{flag}"' in models_cli, flag
    assert '"/v1/health"' in (site / "mineru" / "parser" / "api_server.py").read_text()
    # the image's ENV, read by that MinerU's own config: models where the download put them, and the
    # small backend the download chose
    env_lines = re.findall(r"^ENV ((?:.*\\\n)*.*)$", dockerfile, re.M)
    image_env = dict(kv.split("=", 1) for line in env_lines for kv in shlex.split(line.replace("\\\n", " ")))
    probe = "from mineru.config import config; print(config.model.small_backend, config.model.base_dir)"
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        env={"PATH": os.environ.get("PATH", ""), **image_env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert out == [flag_value(dl, "--small-backend"), f"{image_env['MINERU_HOME']}/models"]


def test_label_studio(resolved: dict[str, Any], airflow_env: dict[str, str]) -> None:
    svc = resolved["services"]["label-studio"]
    env = env_dict(svc)
    assert svc["image"] == "heartexlabs/label-studio:1.23.2"
    assert env["DJANGO_DB"] == "default" and env["POSTGRE_HOST"] == "postgres"
    assert int(env["POSTGRE_PORT"]) in exposed_ports(resolved["services"]["postgres"])
    assert "@" in env["LABEL_STUDIO_USERNAME"]  # Label Studio wants an e-mail address
    assert env["LABEL_STUDIO_USER_TOKEN"] == airflow_env["LABELLOOP_LABEL_STUDIO__TOKEN"]
    assert 5 < len(env["LABEL_STUDIO_USER_TOKEN"]) <= 40  # DRF token key column is 40 chars
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert env["SENTRY_DSN"] == "" and env["FRONTEND_SENTRY_DSN"] == ""
    assert env["LATEST_VERSION_CHECK"] == "false" and env["COLLECT_ANALYTICS"] == "false"
    host, port = host_port(env["S3_ENDPOINT"])
    assert host == "minio" and port in exposed_ports(resolved["services"]["minio"])
    assert "/health" in healthcheck_test(svc)


def test_minio_init_creates_the_bucket(resolved: dict[str, Any], airflow_env: dict[str, str]) -> None:
    init = resolved["services"]["minio-init"]
    script = script_text(init)
    assert init["image"].startswith("minio/mc:")
    assert "mc mb" in script and "$S3_BUCKET" in script
    assert env_dict(init)["S3_BUCKET"] == airflow_env["LABELLOOP_STORAGE__BUCKET"]
    assert env_dict(init)["S3_ACCESS_KEY"] == airflow_env["LABELLOOP_STORAGE__ACCESS_KEY"]
    # Label Studio's storage key is its own and read-only, never the platform's
    ls_key = airflow_env["LABELLOOP_LABEL_STUDIO__S3_ACCESS_KEY"]
    assert env_dict(init)["LS_S3_ACCESS_KEY"] == ls_key != airflow_env["LABELLOOP_STORAGE__ACCESS_KEY"]
    assert 'policy attach local readonly --user "$LS_S3_ACCESS_KEY"' in script
    assert "http://minio:9000" in script
    assert resolved["services"]["minio"]["image"].startswith("minio/minio:")


def test_postgres_hosts_the_three_databases(resolved: dict[str, Any], airflow_env: dict[str, str]) -> None:
    pg = resolved["services"]["postgres"]
    assert pg["image"] == "postgres:16"
    mounts = {v.split(":")[0]: v.split(":")[1] for v in pg["volumes"]}
    assert mounts["./docker/postgres/init.sql"].startswith("/docker-entrypoint-initdb.d/")
    sql = PG_INIT_SQL.read_text()
    databases = dict(re.findall(r"CREATE DATABASE (\w+) OWNER (\w+)", sql))
    roles = set(re.findall(r"CREATE ROLE (\w+) LOGIN PASSWORD :'(\w+)'", sql))
    pw_vars = dict(re.findall(r"\\getenv (\w+) (\w+)", sql))
    ls_env = env_dict(resolved["services"]["label-studio"])
    used = {
        "airflow metadata": urlsplit(airflow_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]),
        "celery results": urlsplit(airflow_env["AIRFLOW__CELERY__RESULT_BACKEND"]),
        "curation": urlsplit(airflow_env["LABELLOOP_DB__URL"]),
    }
    pairs = {what: (u.path.lstrip("/"), u.username) for what, u in used.items()}
    pairs["label studio"] = (ls_env["POSTGRE_NAME"], ls_env["POSTGRE_USER"])
    assert {db for db, _ in pairs.values()} == {"airflow", "labelloop", "labelstudio"}
    for what, (db, user) in pairs.items():
        assert databases.get(db) == user, f"{what}: database {db} is not owned by {user} in init.sql"
    # Every role's password variable reaches the postgres container.
    pg_env = env_dict(pg)
    for _role, pw in roles:
        assert pg_env.get(pw_vars[pw]), f"{pw_vars[pw]} is not set on the postgres service"
