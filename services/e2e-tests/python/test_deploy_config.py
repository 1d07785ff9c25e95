"""The deployments' configuration against the binaries that read it, without Docker or a cluster.

For docker-compose.kafka.yml and the Helm chart's renderings (every values set `make
chart-check` renders), each service container is started the way its runtime would start it —
the image's ENV, then the compose `environment` / the pod's ConfigMaps, env and Secrets, the
config file the chart mounts (the config init container's script run here) — as
`<binary> --check-config`. The oracle is the binary itself: it loads its configuration exactly as
at start-up and names every key that no setting of that service reads. So every PAYSTREAM_*
variable a deployment sets must be read by the service receiving it, and the settings a
container cannot do without (its listen address, where Postgres, Kafka, the registry, the PSP
and the SMTP relay are) must be set, not left to the compiled-in loopback defaults (or, for the key sealing webhook
secrets, unset: the gateway and the notifier refuse to start without it).

The binaries come from PAYSTREAM_BIN_DIR (scripts/test.sh sets it), else the cargo target dir.
"""

import json
import os
import re
import subprocess
import tempfile
import tomllib

import pytest

from deploy_helpers import (ROOT, SERVICE_BINARIES, VALUES_SETS, compose, compose_env, containers,
                            dotted, flatten, image_env, render)

BIN_DIR = os.environ.get("PAYSTREAM_BIN_DIR") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/paystream/target")), "debug")

# Read by every service outside the configuration loader, so --check-config may not count them
# as read. Each stays exempt only while the named source file reads it.
OUTSIDE_CONFIG = {
    "PAYSTREAM_CONFIG_FILE": "services/paystream-core/src/config.rs",
    "PAYSTREAM_LOG_FORMAT": "services/paystream-core/src/telemetry.rs",
}

# What a service in a container cannot leave to its compiled-in defaults (loopback addresses).
CONNECTIONS = ["database.url", "kafka.bootstrap_servers", "schema_registry.url"]
REQUIRED = {
    "gateway": ["http.host", "secrets.encryption_key"] + CONNECTIONS,
    "payment-processor": ["http.host", "psp.url"] + CONNECTIONS,
    "analytics": ["http.host"] + CONNECTIONS,
    "notifier": ["http.host", "notifier.smtp_host", "secrets.encryption_key"] + CONNECTIONS,
    "psp-simulator": ["http.host"],
    "schema-registry": ["http.host", "database.url"],
}

# The `paystream` CLI has no --check-config: it reads these sections of the services'
# configuration (CliSettings in services/cli/src/main.rs), whose keys the gateway, which reads
# them all, vouches for; a few flags also take their default from a variable (clap `env`).
CLI_SECTIONS = {"kafka", "schema_registry", "topics", "database"}
CLI_FLAG_VARIABLES = {"PAYSTREAM_CONSUMER__DLQ_TOPIC", "PAYSTREAM_CONSUMER__GROUP_ID",
                      "PAYSTREAM_SCHEMAS__DIR", "PAYSTREAM_SCHEMAS__COMPATIBILITY"}
CLI_REQUIRED = {
    "migrate": ["database.url"],
    "schemas": ["schema_registry.url"],
    "topics": ["kafka.bootstrap_servers"],
}


def binary(name):
    path = os.path.join(BIN_DIR, name)
    assert os.access(path, os.X_OK), f"{path} is missing: build the workspace (cargo build --workspace --bins)"
    return path


def check_config(name, env, config_text=None):
    """`<name> --check-config` with exactly `env` (and the config file's text, if any)."""
    env = dict(env)
    with tempfile.TemporaryDirectory() as tmp:
        if config_text is not None:
            path = os.path.join(tmp, "config.toml")
            with open(path, "w") as f:
                f.write(config_text)
            env["PAYSTREAM_CONFIG_FILE"] = path
        run = subprocess.run([binary(name), "--check-config"], env=env, capture_output=True,
                             text=True, timeout=60)
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert lines, f"{name} --check-config printed nothing (exit {run.returncode}): {run.stderr.strip()}"
    try:
        verdict = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise AssertionError(f"{name} --check-config: not a JSON verdict: {lines[-1]!r}; "
                             f"stderr: {run.stderr.strip()}")
    return verdict, run.returncode


def problems_of(where, name, env, config_text=None):
    """Everything wrong with starting service `name` with this environment and config file."""
    problems = []
    verdict, code = check_config(name, env, config_text)
    if verdict.get("error"):
        problems.append(f"{where}: {name} does not load its configuration: {verdict['error']}")
    exempt = {dotted(v) for v in OUTSIDE_CONFIG if v in env}
    unknown = [k for k in verdict.get("unknown", []) if k not in exempt]
    for key in unknown:
        variables = [v for v in env if v.startswith("PAYSTREAM_") and dotted(v) == key]
        source = variables[0] if variables else f"{key} in the config file"
        problems.append(f"{where}: {name} reads no setting {key} ({source})")
    if not exempt and not verdict.get("error") and not verdict.get("unknown"):
        assert verdict.get("ok") is True and code == 0, f"{name} --check-config: {verdict}, exit {code}"
    set_keys = {dotted(v) for v in env if v.startswith("PAYSTREAM_")}
    if config_text is not None:
        set_keys |= {k for k, _ in flatten(tomllib.loads(config_text))}
    for key in REQUIRED[name]:
        if key not in set_keys:
            problems.append(f"{where}: {name} needs {key} set (its default is a loopback address)")
    host = env.get("PAYSTREAM_HTTP__HOST")
    if host is not None and host != "0.0.0.0":
        problems.append(f"{where}: {name} listens on {host}, unreachable from outside its container")
    return problems


def cli_problems_of(where, args, env, config_text=None):
    problems = []
    command = args[0] if args else ""
    own = {}
    # The image's ENV (PAYSTREAM_HTTP__HOST for the services) is not the deployment's doing.
    image = image_env()
    for variable in env:
        if not variable.startswith("PAYSTREAM_") or variable in OUTSIDE_CONFIG or variable in CLI_FLAG_VARIABLES:
            continue
        if image.get(variable) == env[variable]:
            continue
        if dotted(variable).split(".")[0] not in CLI_SECTIONS:
            problems.append(f"{where}: the paystream CLI reads no setting {dotted(variable)} ({variable})")
        else:
            own[variable] = env[variable]
    if config_text is not None:
        for key, _ in flatten(tomllib.loads(config_text)):
            if key.split(".")[0] not in CLI_SECTIONS:
                problems.append(f"{where}: the paystream CLI reads no setting {key} (config file)")
    # The keys within those sections: the gateway reads every one the CLI does.
    verdict, _ = check_config("gateway", own, config_text)
    if verdict.get("error"):
        problems.append(f"{where}: the CLI's configuration does not load: {verdict['error']}")
    for key in verdict.get("unknown", []):
        if key.split(".")[0] in CLI_SECTIONS:
            problems.append(f"{where}: the paystream CLI reads no setting {key}")
    set_keys = {dotted(v) for v in env if v.startswith("PAYSTREAM_")}
    for key in CLI_REQUIRED.get(command, []):
        if key not in set_keys:
            problems.append(f"{where}: paystream {command} needs {key} set")
    return problems


def test_exemptions_are_still_read_outside_the_loader():
    for variable, source in OUTSIDE_CONFIG.items():
        with open(os.path.join(ROOT, source)) as f:
            assert variable in f.read(), f"{source} no longer reads {variable}: drop its exemption"


# ------------------------------------------------------------------ docker-compose.kafka.yml

def test_compose_publishes_every_port_on_loopback_only():
    for name, service in compose()["services"].items():
        for port in service.get("ports") or []:
            spec = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port.get('published')}"
            assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+(/(tcp|udp))?", spec), \
                f"{name} publishes {spec!r}: bind it to 127.0.0.1"


def test_compose_runs_the_local_stacks_kafka_major_version():
    with open(os.path.join(ROOT, "scripts", "kafka.sh")) as f:
        local = re.search(r"^KAFKA_VERSION=(\S+)", f.read(), re.M).group(1)
    images = {name: s["image"] for name, s in compose()["services"].items()
              if s.get("image", "").startswith("apache/kafka:")}
    assert images, "no apache/kafka service"
    for name, image in images.items():
        version = image.split(":", 1)[1]
        assert version.split(".")[0] == local.split(".")[0], f"{name}: {image}, the local stack runs {local}"
    kafka = compose()["services"]["kafka"]["environment"]
    # One combined KRaft node: its own controller quorum, never advertised to clients.
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node = str(kafka["KAFKA_NODE_ID"])
    voters = kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert [v.split("@")[0] for v in voters] == [node]
    controller = kafka["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert f"{controller}://" in kafka["KAFKA_LISTENERS"]
    assert f"{controller}://" not in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert voters[0].split("@")[1].split(":")[1] in kafka["KAFKA_LISTENERS"].split(f"{controller}://")[1]
    for key in ["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "KAFKA_DEFAULT_REPLICATION_FACTOR", "KAFKA_MIN_INSYNC_REPLICAS"]:
        assert str(kafka[key]) == "1", f"{key}: a single node needs 1"
    assert kafka.get("CLUSTER_ID")


def test_compose_environment_is_read_by_the_services():
    problems, checked = [], []
    for name, service in compose()["services"].items():
        entrypoint = service.get("entrypoint") or []
        program = entrypoint[0] if isinstance(entrypoint, list) and entrypoint else None
        if service.get("image") != "paystream:dev" or program is None:
            continue
        env = dict(image_env(), **compose_env(service))
        where = f"docker-compose.kafka.yml {name}"
        if program in SERVICE_BINARIES:
            problems += problems_of(where, program, env)
        elif program == "paystream":
            problems += cli_problems_of(where, service.get("command") or [], env)
        else:
            problems.append(f"{where}: unknown program {program}")
        checked.append(name)
    assert {"gateway", "payment-processor", "analytics", "notifier", "psp-simulator"} <= set(checked)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ the Helm chart

@pytest.mark.parametrize("values_set", sorted(VALUES_SETS))
def test_chart_environment_is_read_by_the_services(values_set):
    docs = render(values_set)
    problems, checked = [], set()
    with tempfile.TemporaryDirectory() as tmp:
        for workload, c in containers(docs, tmp):
            where = f"{values_set} {workload}/{c.name}"
            config_text = None
            if "PAYSTREAM_CONFIG_FILE" in c.env:
                path = c.env["PAYSTREAM_CONFIG_FILE"]
                assert path in c.files, f"{where}: PAYSTREAM_CONFIG_FILE={path}, which the pod does not mount"
                config_text = c.files[path]
            if c.binary in SERVICE_BINARIES:
                problems += problems_of(where, c.binary, c.env, config_text)
            elif c.binary == "paystream":
                problems += cli_problems_of(where, c.command[1:] + c.args, c.env, config_text)
            else:
                problems.append(f"{where}: unknown program {c.command}")
            checked.add(c.binary)
    assert {"gateway", "payment-processor", "paystream"} <= checked
    assert not problems, "\n".join(problems)
