"""Renders the Helm chart and reads docker-compose.kafka.yml for test_chart.py and
test_deploy_config.py: no cluster, no Docker. Helm comes from scripts/helm.sh (built once from
the Go module proxy into the cache)."""

import functools
import os
import re
import subprocess

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
CHART = os.path.join(ROOT, "deploy", "helm", "paystream")
COMPOSE = os.path.join(ROOT, "docker-compose.kafka.yml")
DOCKERFILE = os.path.join(ROOT, "deploy", "docker", "Dockerfile")
RELEASE = "paystream"

# The values sets `make chart-check` renders: the default install, the development example, a
# production-like install and every optional component on.
VALUES_SETS = {
    "default-install": "ci/minimal-values.yaml",
    "dev": "values-dev.yaml",
    "production": "ci/production-values.yaml",
    "all-on": "ci/all-on-values.yaml",
}
SERVICE_BINARIES = {"gateway", "payment-processor", "analytics", "notifier", "psp-simulator",
                    "schema-registry"}


@functools.lru_cache(maxsize=None)
def helm():
    return subprocess.run([os.path.join(ROOT, "scripts", "helm.sh")], check=True,
                          capture_output=True, text=True).stdout.strip()


@functools.lru_cache(maxsize=None)
def _render(values_file, sets):
    cmd = [helm(), "template", RELEASE, CHART, "-f", os.path.join(CHART, values_file)]
    for s in sets:
        cmd += ["--set", s]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, f"helm template -f {values_file} {sets}:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def render(values_set="default-install", *sets):
    """The chart's documents for a values set (a key of VALUES_SETS) plus --set overrides."""
    return list(_render(VALUES_SETS.get(values_set, values_set), tuple(sets)))


def find(docs, kind, suffix=None):
    return [d for d in docs if d["kind"] == kind
            and (suffix is None or d["metadata"]["name"].endswith(suffix))]


def one(docs, kind, suffix):
    found = find(docs, kind, suffix)
    assert len(found) == 1, f"{kind} *{suffix}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def workloads(docs):
    """(kind, name, component, pod template) of every Deployment, StatefulSet and Job."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            template = d["spec"]["template"]
            component = template["metadata"]["labels"].get("app.kubernetes.io/component")
            yield d["kind"], d["metadata"]["name"], component, template


def selects(selector, labels):
    """Whether a Kubernetes label selector selects these labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for e in selector.get("matchExpressions") or []:
        present, value = e["key"] in labels, labels.get(e["key"])
        op = e["operator"]
        if (op == "In" and value not in e["values"]) or (op == "NotIn" and value in e["values"]) \
                or (op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True


def secret_data(docs, name, key):
    for d in find(docs, "Secret"):
        if d["metadata"]["name"] == name:
            return (d.get("stringData") or {}).get(key)
    return None


def configmap_data(docs, name):
    for d in find(docs, "ConfigMap"):
        if d["metadata"]["name"] == name:
            return d.get("data") or {}
    raise AssertionError(f"no ConfigMap {name} in the rendering")


def image_env():
    """ENV of the image's last stage (deploy/docker/Dockerfile): every container starts with it."""
    env, stage = {}, []
    with open(DOCKERFILE) as f:
        for line in f:
            if line.startswith("FROM "):
                stage = []
            stage.append(line)
    for line in stage:
        m = re.match(r"ENV\s+(\S+?)=(\S*)\s*$", line)
        if m:
            env[m.group(1)] = m.group(2)
    return env


class Container:
    """One container as the kubelet would start it: its environment and its files."""

    def __init__(self, docs, pod, container, files_dir):
        self.name = container["name"]
        self.command = container.get("command") or []
        self.args = container.get("args") or []
        self.binary = os.path.basename(self.command[0]) if self.command else None
        self.env = self._env(docs, container)
        self.files = self._files(docs, pod, container, files_dir)

    @staticmethod
    def _env(docs, container):
        env = dict(image_env())
        for source in container.get("envFrom") or []:
            ref = source.get("configMapRef")
            assert ref, f"{container['name']}: envFrom other than a ConfigMap: {source}"
            env.update(configmap_data(docs, ref["name"]))
        for var in container.get("env") or []:
            if "value" in var:
                # $(NAME) expands to a variable defined before it, as the kubelet does.
                env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)),
                                          str(var["value"]))
                continue
            source = var["valueFrom"]
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                value = secret_data(docs, ref["name"], ref["key"])
                # An existing Secret of the operator's: a stand-in value of the right shape.
                env[var["name"]] = value if value is not None else \
                    f"from-secret-{ref['name']}-{ref['key']}"
            elif "fieldRef" in source:
                env[var["name"]] = "paystream-pod-0"
            else:
                raise AssertionError(f"{container['name']}: unexpected valueFrom {source}")
        return env

    @staticmethod
    def _mount_sources(pod, container):
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        return {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts") or []}

    def _files(self, docs, pod, container, files_dir):
        """Files under the container's mounts that the chart provides: Secret data, and what the
        config init container writes (its script is run here, with the paths remapped)."""
        files = {}
        spec = pod["spec"]
        init_outputs = {}
        for init in spec.get("initContainers") or []:
            if init.get("command", [None])[0] != "/bin/sh":
                continue
            init_env = self._env(docs, init)
            mounts = self._mount_sources(pod, init)
            local = {}
            for path, volume in mounts.items():
                local_dir = os.path.join(files_dir, init["name"] + path.replace("/", "_"))
                os.makedirs(local_dir, exist_ok=True)
                if "secret" in volume:
                    for key, value in self._secret_files(docs, volume["secret"]).items():
                        with open(os.path.join(local_dir, key), "w") as f:
                            f.write(value)
                local[path] = local_dir
            for key, value in list(init_env.items()):
                for path, local_dir in local.items():
                    if value.startswith(path + "/"):
                        init_env[key] = local_dir + value[len(path):]
            init_env.update(self.secret_overrides)
            init_env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")  # the image's
            run = subprocess.run(["/bin/sh", "-c", init["args"][0]], env=init_env,
                                 capture_output=True, text=True)
            assert run.returncode == 0, f"init container {init['name']}: {run.stderr}"
            for path, volume_name in ((m["mountPath"], m["name"]) for m in init["volumeMounts"]):
                init_outputs[volume_name] = local[path]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for m in container.get("volumeMounts") or []:
            volume = volumes[m["name"]]
            if "secret" in volume:
                for key, value in self._secret_files(docs, volume["secret"]).items():
                    files[f"{m['mountPath']}/{key}"] = value
            elif m["name"] in init_outputs:
                for key in os.listdir(init_outputs[m["name"]]):
                    with open(os.path.join(init_outputs[m["name"]], key)) as f:
                        files[f"{m['mountPath']}/{key}"] = f.read()
        return files

    # Values of the Secrets an operator provides, for the init container's script.
    secret_overrides = {}

    @staticmethod
    def _secret_files(docs, secret_volume):
        name = secret_volume["secretName"]
        for d in find(docs, "Secret"):
            if d["metadata"]["name"] == name:
                return dict(d.get("stringData") or {})
        # An operator's Secret (a CA certificate, say): not ours to provide.
        return {}


def containers(docs, files_dir):
    """(workload name, Container) of every main container of every workload."""
    out = []
    for kind, name, component, template in workloads(docs):
        for c in template["spec"]["containers"]:
            out.append((name, Container(docs, template, c, os.path.join(files_dir, name))))
    return out


def compose():
    with open(COMPOSE) as f:
        return yaml.safe_load(f)  # SafeLoader resolves the <<: merge keys


def compose_value(value):
    """A compose environment value after interpolation: ${VAR:-default} gives the default
    (the test runs with no such variable set), $$ a dollar sign."""
    value = "" if value is None else str(value)
    value = re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)
    return value.replace("$$", "$")


def compose_env(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: compose_value(v) for k, v in env.items()}


def dotted(variable):
    """PAYSTREAM_A__B_C -> a.b_c, the configuration key an environment variable sets."""
    return variable[len("PAYSTREAM_"):].lower().replace("__", ".")


def flatten(table, prefix=""):
    for key, value in table.items():
        if isinstance(value, dict) and value:
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
