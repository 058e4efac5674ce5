"""docker-compose.yml and the Dockerfile: every container runs a real `bookrec` command, and the
deployment keeps the promises DESIGN.md makes (workers wait for Redis and the first model, the
model store is on the shared volume, the dashboard is bookrec's own and reaches the same stores, rq-dashboard reads JSON
jobs, no secret goes through a shell).

The compose file is read with PyYAML, so no Docker is needed. Compose's `${VAR:-default}`
interpolation is applied with an empty environment (what `docker compose up` does without a
.env file) unless a test passes its own.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import pytest
import yaml
from redis.connection import parse_url

from bookrec.shared.settings import Settings
from tests.unit.conftest import parse_bookrec

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

SHARED_VOLUME = "bookrec-data"
TRAINING_SERVICES = ("init", "trainer")  # the services that train models


# ---- reading the compose file ------------------------------------------------------------------

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>\w+))")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Apply Compose's variable substitution to every string in `value`, reading `env`.

    Supports `$$`, `$VAR`, `${VAR}`, `${VAR-default}`, `${VAR:-default}`, `${VAR?msg}` and
    `${VAR:?msg}`; a required variable that is missing raises, as `docker compose` does.
    """
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        op, arg = match["op"], match["arg"]
        current = env.get(name)
        missing = current is None or (current == "" and op is not None and op.startswith(":"))
        if op in ("-", ":-"):
            return arg if missing else current
        if op in ("?", ":?"):
            if missing:
                raise ValueError(f"docker-compose.yml requires {name} to be set: {arg}")
            return current
        return current or ""

    return _VARIABLE.sub(substitute, value)


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml as Compose resolves it (YAML anchors and merge keys, then variables)."""
    return interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), env or {})


RAW = yaml.safe_load(COMPOSE_FILE.read_text())  # before interpolation: for the secrets check
COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def runs_bookrec_image(service: dict[str, Any]) -> bool:
    """True for services built from the Dockerfile's `app` target (ENTRYPOINT ["bookrec"])."""
    build = service.get("build")
    target = build.get("target") if isinstance(build, dict) else None
    return target == "app" or str(service.get("image", "")).startswith("bookrec:")


BOOKREC_SERVICES = sorted(name for name, service in SERVICES.items() if runs_bookrec_image(service))


def option(argv: list[str], flag: str) -> str:
    """The value after `flag` in a command list (fails the test if the flag is absent)."""
    assert flag in argv, f"{argv} has no {flag}"
    return argv[argv.index(flag) + 1]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict (Compose allows a mapping or a list of KEY=VALUE)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Named-volume or host-path source -> container path, for short and long volume syntax."""
    mounts = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source, target = entry.split(":")[:2]
        else:
            source, target = entry.get("source", ""), entry["target"]
        mounts[source] = target
    return mounts


# ---- every bookrec container runs a real command -----------------------------------------------


def test_init_worker_and_trainer_run_the_bookrec_image() -> None:
    assert {"init", "worker", "trainer"} <= set(BOOKREC_SERVICES), BOOKREC_SERVICES


@pytest.mark.parametrize("name", BOOKREC_SERVICES)
def test_command_is_a_real_bookrec_command(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    service = SERVICES[name]
    # The image's ENTRYPOINT is `bookrec`; an entrypoint override would run something else.
    assert "entrypoint" not in service, f"{name} overrides the bookrec entrypoint"
    command = service.get("command")
    assert isinstance(command, list) and all(isinstance(arg, str) for arg in command), (
        f"{name}: command must be a list of strings (exec form), got {command!r}"
    )
    args = parse_bookrec(command, capsys)
    assert callable(getattr(args, "handler", None)), (
        f"`bookrec {' '.join(command)}` parses but names no runnable command"
    )


def test_init_is_the_one_shot_bookrec_init() -> None:
    init = SERVICES["init"]
    assert init["command"][0] == "init"
    assert str(init.get("restart")) == "no", "init must run once, not be restarted after it exits"


def test_workers_serve_recommend_and_refresh_and_only_the_trainer_trains() -> None:
    worker, trainer = SERVICES["worker"]["command"], SERVICES["trainer"]["command"]
    assert worker[0] == trainer[0] == "worker"
    assert option(worker, "--queues").split(",") == ["recommend", "fresh", "refresh"], (
        "requests first, then fresh lists"
    )
    assert option(trainer, "--queues").split(",") == ["retrain"], "training must not share a queue with serving"
    # One process per replica: replicas are what scale (`--scale worker=N`).
    assert option(worker, "--processes") == "1"
    assert option(trainer, "--processes") == "1"


def test_tensorflow_threads_one_per_serving_process_all_cores_for_training() -> None:
    assert environment(SERVICES["worker"]).get("BOOKREC_TF_THREADS") == "1"
    for name in TRAINING_SERVICES:
        assert environment(SERVICES[name]).get("BOOKREC_TF_THREADS") == "0", name


# ---- start-up order, scaling, shutdown -----------------------------------------------------------


def test_redis_has_a_healthcheck_that_pings_it() -> None:
    redis = SERVICES["redis"]
    assert redis["image"].startswith("redis:7")
    check = redis.get("healthcheck") or {}
    assert not check.get("disable"), "redis healthcheck is disabled"
    test = check.get("test")
    text = " ".join(test) if isinstance(test, list) else str(test)
    assert "redis-cli" in text and "ping" in text, f"redis healthcheck does not ping Redis: {test!r}"


@pytest.mark.parametrize("name", ["worker", "trainer"])
def test_workers_wait_for_healthy_redis_and_a_successful_init(name: str) -> None:
    depends = SERVICES[name].get("depends_on")
    assert isinstance(depends, dict), (
        f"{name}: depends_on needs conditions, not a plain list (which only waits for start)"
    )
    assert depends.get("redis", {}).get("condition") == "service_healthy"
    assert depends.get("init", {}).get("condition") == "service_completed_successfully"


def test_init_waits_for_healthy_redis() -> None:
    assert SERVICES["init"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_worker_runs_two_scalable_replicas() -> None:
    worker = SERVICES["worker"]
    assert worker.get("deploy", {}).get("replicas") == 2
    # Either of these makes `--scale worker=N` fail: names and host ports must be unique.
    assert "container_name" not in worker
    assert not worker.get("ports"), "worker publishes a host port, so a second replica cannot start"
    assert str(worker.get("restart")) == "unless-stopped"


def test_workers_get_time_to_finish_their_job_on_stop() -> None:
    def seconds(text: str) -> int:
        units = {"s": 1, "m": 60, "h": 3600}
        return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", text))

    for name in ("worker", "trainer"):
        grace = str(SERVICES[name].get("stop_grace_period", "10s"))  # Docker's default is 10s
        assert seconds(grace) >= 30, f"{name}: stop_grace_period {grace} is too short to finish a job"


# ---- shared volume and settings ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["init", "worker", "trainer"])
def test_model_store_and_data_dir_are_on_the_shared_volume(name: str) -> None:
    service = SERVICES[name]
    env = environment(service)
    mounts = volume_mounts(service)
    assert SHARED_VOLUME in mounts, f"{name} does not mount the {SHARED_VOLUME} volume"
    mount = PurePosixPath(mounts[SHARED_VOLUME])
    store = PurePosixPath(env["BOOKREC_MODEL_STORE"])
    assert store.parent == mount, f"{name}: model store {store} is not directly under the volume at {mount}"
    assert mount in PurePosixPath(env["BOOKREC_DATA_DIR"]).parents, f"{name}: data dir is not on the shared volume"
    assert SHARED_VOLUME in COMPOSE.get("volumes", {}), "the shared volume is not declared at top level"


def test_every_bookrec_service_shares_the_same_settings() -> None:
    envs = {name: environment(SERVICES[name]) for name in BOOKREC_SERVICES}
    for key in ("BOOKREC_REDIS_URL", "BOOKREC_MODEL_STORE", "BOOKREC_DATA_DIR", "BOOKREC_KEY_PREFIX"):
        values = {name: env.get(key) for name, env in envs.items()}
        assert None not in values.values() and len(set(values.values())) == 1, f"{key} differs or is missing: {values}"
    assert parse_url(envs["worker"]["BOOKREC_REDIS_URL"])["host"] == "redis", "workers must use the redis service"


@pytest.mark.parametrize("password", ["", "0f3a9c"])
def test_redis_password_reaches_server_healthcheck_and_every_client(password: str) -> None:
    """The password Redis requires, the one redis-cli sends and the ones in the URLs are the same."""
    services = load_compose({"BOOKREC_REDIS_PASSWORD": password} if password else {})["services"]
    redis = services["redis"]
    assert option(redis["command"], "--requirepass") == password
    assert environment(redis).get("REDISCLI_AUTH") == password
    urls = [environment(services[name])["BOOKREC_REDIS_URL"] for name in BOOKREC_SERVICES]
    urls.append(environment(services["rq-dashboard"])["RQ_DASHBOARD_REDIS_URL"])
    for url in urls:
        assert parse_url(url).get("password") == (password or None), url


def test_rq_dashboard_reads_jobs_with_the_json_serializer() -> None:
    dashboard = SERVICES["rq-dashboard"]
    assert dashboard.get("entrypoint") == ["rq-dashboard"]
    command = dashboard.get("command") or []
    # rq-dashboard's flag for rq.serializers.JSONSerializer is -j/--json (it has no --serializer).
    assert "--json" in command or "-j" in command, f"rq-dashboard would unpickle jobs: {command!r}"
    assert option(command, "--port") == "9181"
    assert environment(dashboard)["RQ_DASHBOARD_REDIS_URL"] == environment(SERVICES["worker"])["BOOKREC_REDIS_URL"]
    assert any(str(port).endswith(":9181") for port in dashboard.get("ports", []))


def test_the_dashboard_is_bookrec_dashboard_on_the_host_s_loopback_reading_the_same_stores() -> None:
    dashboard = SERVICES["dashboard"]
    assert "dashboard" in BOOKREC_SERVICES, "the dashboard must run the bookrec image (its app target has bookrec[web])"
    command = dashboard["command"]
    assert command[0] == "dashboard" and option(command, "--host") == "0.0.0.0"
    port = option(command, "--port")
    published = [str(p) for p in dashboard.get("ports", [])]
    assert published == [f"127.0.0.1:8050:{port}"], (
        f"the dashboard must publish its port on 127.0.0.1 only: {published}"
    )
    env, worker = environment(dashboard), environment(SERVICES["worker"])
    for key in ("BOOKREC_REDIS_URL", "BOOKREC_DATABASE_URL", "BOOKREC_MODEL_STORE", "BOOKREC_KEY_PREFIX"):
        assert env[key] == worker[key], f"the dashboard's {key} is not the workers'"
    assert volume_mounts(dashboard).get(SHARED_VOLUME) == volume_mounts(SERVICES["worker"])[SHARED_VOLUME]
    assert dashboard["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_dashboard_token_comes_from_the_environment_and_is_empty_by_default() -> None:
    assert environment(SERVICES["dashboard"])["BOOKREC_DASHBOARD_TOKEN"] == "", "read-only unless .env sets a token"
    token = "0123456789abcdef0123"
    services = load_compose({"BOOKREC_DASHBOARD_TOKEN": token, "BOOKREC_DASHBOARD_PORT": "18050"})["services"]
    assert environment(services["dashboard"])["BOOKREC_DASHBOARD_TOKEN"] == token
    assert [str(p) for p in services["dashboard"]["ports"]] == ["127.0.0.1:18050:8050"]
    assert not any("BOOKREC_DASHBOARD_TOKEN" in environment(services[name]) for name in services if name != "dashboard")


# ---- metrics: Prometheus scrapes every bookrec service that serves them --------------------------

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
METRICS_SERVICES = {
    "worker": "metrics_port",
    "trainer": "metrics_port",
    "ingest": "ingest_metrics_port",
    "scheduler": "scheduler_metrics_port",
}
"""The services that serve metrics, and the setting naming their port."""


def scrape_targets() -> dict[str, tuple[str, int]]:
    """Per job of the committed scrape config: the Compose service it finds by DNS and the port it scrapes."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    targets = {}
    for job in config["scrape_configs"]:
        (lookup,) = job["dns_sd_configs"]
        assert lookup.get("type") == "A", f"{job['job_name']}: replicas are found by their A records"
        (name,) = lookup["names"]
        targets[job["job_name"]] = (name, lookup["port"])
    return targets


def test_prometheus_runs_a_pinned_image_with_the_committed_config_and_only_a_loopback_port() -> None:
    prometheus = SERVICES["prometheus"]
    image = prometheus["image"]
    assert image.startswith("prom/prometheus:v"), f"pin a Prometheus release, not {image!r}"
    mounts = volume_mounts(prometheus)
    assert mounts.get("./deploy/prometheus") == "/etc/prometheus", mounts
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert all(str(port).startswith("127.0.0.1:") for port in prometheus.get("ports", [])), prometheus["ports"]


@pytest.mark.parametrize("name", sorted(METRICS_SERVICES))
def test_prometheus_scrapes_each_bookrec_service_at_the_port_it_serves_on(name: str) -> None:
    settings = Settings.from_env(environment(SERVICES[name]))
    port = getattr(settings, METRICS_SERVICES[name])
    assert port, f"{name} serves no metrics"
    assert settings.metrics_host == "0.0.0.0", (
        f"{name} serves metrics on {settings.metrics_host}, out of Prometheus's reach"
    )
    assert scrape_targets().get(name) == (name, port), f"Prometheus does not scrape {name} on port {port}"
    assert not SERVICES[name].get("ports"), f"{name} publishes a host port"


def test_the_scrape_config_names_only_services_that_exist_and_its_rule_files() -> None:
    assert {service for service, _ in scrape_targets().values()} <= set(SERVICES)
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    for rules in config.get("rule_files", []):
        groups = yaml.safe_load((PROMETHEUS_DIR / rules).read_text())["groups"]
        assert all(rule["alert"] and rule["expr"] for group in groups for rule in group["rules"]), rules


# ---- no secret through a shell -------------------------------------------------------------------

_SHELLS = {"sh", "bash", "ash", "/bin/sh", "/bin/bash"}
_SECRET_REFERENCE = re.compile(r"\$+\{?\w*(PASSWORD|PASSWD|SECRET|TOKEN|AUTH|CREDENTIAL|API_KEY)", re.IGNORECASE)


def shell_scripts(service: dict[str, Any]) -> list[str]:
    """Every piece of a service that a shell will parse: string commands, CMD-SHELL, `sh -c`."""
    scripts = []
    candidates = [service.get("command"), service.get("entrypoint"), (service.get("healthcheck") or {}).get("test")]
    for value in candidates:
        if isinstance(value, str):
            scripts.append(value)  # Compose runs a string command/entrypoint through a shell
        elif isinstance(value, list) and value:
            if value[0] == "CMD-SHELL":
                scripts.append(" ".join(value[1:]))
            elif value[0] in _SHELLS or (value[0] == "CMD" and len(value) > 1 and value[1] in _SHELLS):
                scripts.append(" ".join(value))
    return scripts


def secret_references(service: dict[str, Any]) -> list[str]:
    return [script for script in shell_scripts(service) if _SECRET_REFERENCE.search(script)]


def test_the_secret_check_catches_a_password_in_a_shell_line() -> None:
    # The check below must be able to fail: these are the mistakes it exists for.
    assert secret_references({"command": "redis-server --requirepass ${BOOKREC_REDIS_PASSWORD}"})
    assert secret_references({"healthcheck": {"test": ["CMD-SHELL", "redis-cli -a $$REDIS_PASSWORD ping"]}})
    assert secret_references({"entrypoint": ["sh", "-c", "exec app --token $API_TOKEN"]})
    assert not secret_references({"command": ["redis-server", "--requirepass", "${BOOKREC_REDIS_PASSWORD}"]})


@pytest.mark.parametrize("name", sorted(RAW["services"]))
def test_no_service_passes_a_secret_through_a_shell(name: str) -> None:
    # Checked before interpolation, where `${...}` is still visible.
    assert not secret_references(RAW["services"][name]), f"{name} interpolates a secret into a shell line"


# ---- the Dockerfile agrees ------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, dict[str, Any]]:
    """Per stage: its base and the ENTRYPOINT, USER and ENV it ends with (inherited from its base)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            parts = rest.split()
            base = stages.get(parts[0], {"entrypoint": None, "user": "root", "env": {}})
            current = {
                "base": parts[0],
                "entrypoint": base["entrypoint"],
                "user": base["user"],
                "env": dict(base["env"]),
            }
            stages[parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else f"#{len(stages)}"] = current
        elif current is not None and instruction == "ENTRYPOINT":
            current["entrypoint"] = yaml.safe_load(rest)
        elif current is not None and instruction == "USER":
            current["user"] = rest.strip()
        elif current is not None and instruction == "ENV":
            current["env"].update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    stages["#last"] = current or {}
    return stages


def test_dockerfile_app_target_runs_bookrec_as_a_user_with_the_compose_paths() -> None:
    stages = dockerfile_stages()
    assert "app" in stages and stages["#last"] is stages["app"], "`docker build .` must build the app target"
    app = stages["app"]
    assert app["entrypoint"] == ["bookrec"]
    assert app["user"].split(":")[0] not in ("root", "0"), "the image runs as root"
    # With no compose environment (plain `docker run -v bookrec-data:/var/lib/bookrec`), the
    # defaults must still put models and data on the volume the compose file mounts.
    mount = PurePosixPath(volume_mounts(SERVICES["worker"])[SHARED_VOLUME])
    assert PurePosixPath(app["env"]["BOOKREC_MODEL_STORE"]).parent == mount
    assert mount in PurePosixPath(app["env"]["BOOKREC_DATA_DIR"]).parents
    dashboard = stages["rq-dashboard"]
    assert dashboard["entrypoint"] == ["rq-dashboard"] and dashboard["user"].split(":")[0] not in ("root", "0")


def test_build_context_holds_every_package_and_no_secrets_or_data() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", ".dockerignore must start by excluding everything (an allow-list)"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert not allowed & {".env", ".git", ".venv", "var", "tests"}, allowed
    # A package added to pyproject but not to the allow-list would be missing from the image.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= allowed, f"packages missing from the build context: {sorted(packages - allowed)}"
    assert "pyproject.toml" in allowed


# ---- Docker's own parser, where it is installed ------------------------------------------------


def _compose_cli() -> list[str] | None:
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) is None:
            continue
        version = subprocess.run([*argv, "version"], capture_output=True, text=True, timeout=30)
        if version.returncode == 0 and "v2" in version.stdout:
            return argv
    return None


def test_docker_compose_accepts_the_file() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("Docker Compose v2 is not installed (the checks above do not need it)")
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), "config", "--quiet"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
