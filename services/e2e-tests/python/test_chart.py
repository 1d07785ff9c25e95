"""The Helm chart's renderings (deploy/helm/paystream), without a cluster: what `make
chart-check` cannot see from schemas alone. Renders with the Helm built by scripts/helm.sh."""

import os
import re
import subprocess
import tempfile
import tomllib

import pytest

from deploy_helpers import (Container, configmap_data, find, one, render, selects, workloads)

METRICS_COMPONENTS = {"gateway", "payment-processor", "analytics", "notifier"}
SERVICE_COMPONENTS = METRICS_COMPONENTS | {"psp-simulator"}


def pod_annotations(docs, component):
    for kind, name, c, template in workloads(docs):
        if c == component:
            return template["metadata"].get("annotations") or {}
    raise AssertionError(f"no workload for {component}")


def checksums(docs):
    return {c: (pod_annotations(docs, c)["checksum/config"], pod_annotations(docs, c)["checksum/secret"])
            for c in SERVICE_COMPONENTS if any(w[2] == c for w in workloads(docs))}


def changed(before, after, which):
    index = {"config": 0, "secret": 1}[which]
    return {c for c in before if before[c][index] != after[c][index]}


def test_default_install_renders_with_only_the_documented_values():
    docs = render("default-install")
    components = {w[2] for w in workloads(docs)}
    assert {"gateway", "payment-processor", "analytics", "notifier", "migrations", "topics"} <= components
    assert "psp-simulator" not in components


def test_notifier_needs_no_smtp_host_when_disabled():
    docs = render("default-install", "notifier.enabled=false", "notifier.smtp.host=")
    assert "notifier" not in {w[2] for w in workloads(docs)}


@pytest.mark.parametrize("values_set", ["default-install", "dev", "production", "all-on"])
def test_numbers_render_as_integers(values_set):
    """Helm reads YAML numbers as float64: 1000000 must not become 1e+06 anywhere."""
    docs = render(values_set)
    for cm in find(docs, "ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            if key.startswith(("PAYSTREAM_", "OTEL_")):
                exponents = [p for p in value.split(",") if re.fullmatch(r"-?\d+(\.\d+)?[eE][+-]?\d+", p)]
                assert not exponents, f"{cm['metadata']['name']} {key}={value}"
    processor = configmap_data(render("production"), "paystream-payment-processor")
    assert processor["PAYSTREAM_CONSUMER__RETRY_DELAYS_MS"] == "1000,60000,1000000"
    big = configmap_data(render("default-install", "analytics.retryDelaysMs={2000000,30000000}",
                                "gateway.maxAmountMinor=10000000000"), "paystream-analytics")
    assert big["PAYSTREAM_CONSUMER__RETRY_DELAYS_MS"] == "2000000,30000000"


def test_pods_roll_when_a_configmap_they_load_changes():
    base = checksums(render("dev"))
    # Each component's own ConfigMap rolls that component only.
    for setting, component in [("analytics.allowedLatenessMs=1", "analytics"),
                               ("notifier.smtp.port=2526", "notifier"),
                               ("notifier.retryDelaysMs={5}", "notifier"),
                               ("paymentProcessor.batchMaxWaitMs=7", "payment-processor"),
                               ("gateway.maxBodyBytes=1024", "gateway"),
                               ("pspSimulator.latencyMs=1", "psp-simulator")]:
        after = checksums(render("dev", setting))
        assert changed(base, after, "config") == {component}, setting
    # The common ConfigMap rolls every pod that loads it (not the PSP simulator).
    after = checksums(render("dev", "database.maxConnections=3"))
    assert changed(base, after, "config") == METRICS_COMPONENTS


def test_pods_roll_when_a_chart_secret_they_use_changes():
    base = checksums(render("dev"))
    after = checksums(render("dev", "kafka.properties.client\\.rack=eu-1a"))
    assert changed(base, after, "secret") == METRICS_COMPONENTS
    after = checksums(render("dev", "database.url=postgres://other@postgres/postgres"))
    assert changed(base, after, "secret") == METRICS_COMPONENTS
    after = checksums(render("dev", "gateway.adminToken=rotated"))
    assert changed(base, after, "secret") == {"gateway"}
    after = checksums(render("dev", "secrets.encryptionKey=bm90LWEtcmVhbC1rZXktbm90LWEtcmVhbC1rZXktISE="))
    assert changed(base, after, "secret") == {"gateway", "notifier"}


@pytest.mark.parametrize("values_set", ["dev", "production"])
def test_only_the_gateway_and_the_notifier_hold_the_encryption_key(values_set):
    docs = render(values_set)
    holders = set()
    for kind, name, component, template in workloads(docs):
        for container in template["spec"]["containers"]:
            if any(e["name"] == "PAYSTREAM_SECRETS__ENCRYPTION_KEY" for e in container.get("env") or []):
                holders.add(component)
    assert holders == {"gateway", "notifier"}


def test_every_configmap_a_pod_loads_is_hashed():
    """The checksum helper names the same ConfigMaps the pod's envFrom loads."""
    docs = render("all-on")
    for kind, name, component, template in workloads(docs):
        if component not in SERVICE_COMPONENTS:
            continue
        loaded = {ref["configMapRef"]["name"] for c in template["spec"]["containers"]
                  for ref in c.get("envFrom") or []}
        expected = {f"paystream-ps-{component}"}
        if component != "psp-simulator":
            expected.add("paystream-ps-common")
        assert loaded == expected, name


def test_pod_monitor_selects_exactly_the_pods_serving_metrics():
    docs = render("all-on")
    monitor = one(docs, "PodMonitor", "paystream-ps")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selected = {c for _, _, c, t in workloads(docs) if selects(monitor["spec"]["selector"], t["metadata"]["labels"])}
    assert selected == METRICS_COMPONENTS
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    # Without analytics and the notifier, it selects what is left.
    docs = render("production", "analytics.enabled=false", "notifier.enabled=false")
    monitor = one(docs, "PodMonitor", "paystream")
    selected = {c for _, _, c, t in workloads(docs) if selects(monitor["spec"]["selector"], t["metadata"]["labels"])}
    assert selected == {"gateway", "payment-processor"}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


@pytest.mark.parametrize("values_set", ["default-install", "production", "all-on"])
def test_every_statefulset_and_the_gateway_have_a_disruption_budget(values_set):
    docs = render(values_set)
    budgets = find(docs, "PodDisruptionBudget")
    for d in find(docs, "StatefulSet") + find(docs, "Deployment"):
        labels = d["spec"]["template"]["metadata"]["labels"]
        if labels["app.kubernetes.io/component"] == "psp-simulator":
            continue  # one pod, replaced rather than rolled
        if values_set == "all-on" and labels["app.kubernetes.io/component"] == "analytics":
            assert not [b for b in budgets if selects(b["spec"]["selector"], labels)]
            continue  # disabled there
        matching = [b for b in budgets if selects(b["spec"]["selector"], labels)]
        assert len(matching) == 1, d["metadata"]["name"]
    production = {b["metadata"]["name"]: b["spec"] for b in find(render("production"), "PodDisruptionBudget")}
    assert production["paystream-gateway"].get("minAvailable") == 2
    assert "maxUnavailable" not in production["paystream-gateway"]
    all_on = {b["metadata"]["name"]: b["spec"] for b in find(render("all-on"), "PodDisruptionBudget")}
    assert all_on["paystream-ps-gateway"]["maxUnavailable"] == "50%"
    zero = find(render("default-install", "paymentProcessor.podDisruptionBudget.maxUnavailable=0"),
                "PodDisruptionBudget")
    assert [b["spec"]["maxUnavailable"] for b in zero if b["metadata"]["name"].endswith("processor")] == [0]


@pytest.mark.parametrize("values_set", ["default-install", "dev", "production", "all-on"])
def test_every_service_container_has_a_startup_probe(values_set):
    for kind, name, component, template in workloads(render(values_set)):
        if kind == "Job":
            continue
        for c in template["spec"]["containers"]:
            probe = c.get("startupProbe")
            assert probe and probe["httpGet"]["path"] == "/health/live", name
            assert c["livenessProbe"] and c["readinessProbe"], name


def test_topic_creation_has_one_owner():
    docs = render("production")
    job = one(docs, "Job", "-topics")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(annotations["helm.sh/hook-weight"]) > int(one(docs, "Job", "-migrations")["metadata"]["annotations"]["helm.sh/hook-weight"])
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["paystream"]
    assert container["args"] == ["topics", "create", "--partitions=12", "--replication-factor=3",
                                 "--retry-partitions=3", "--retry-stages=3", "--group=payment-processor",
                                 "--dlq-topic=payment-processor.dlq", "--other-groups=analytics,notifier"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PAYSTREAM_KAFKA__PROVISIONING__REPLICATION_FACTOR"] == "3"
    assert env["PAYSTREAM_CONFIG_FILE"] == "/etc/paystream/config/config.toml"
    common = configmap_data(docs, "paystream-common")
    assert common["PAYSTREAM_KAFKA__PROVISIONING__CREATE_TOPICS"] == "false"

    # The longest retry chain sets the stages; disabled groups get no topics; custom names.
    docs = render("all-on")
    args = one(docs, "Job", "-topics")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--retry-stages=4" in args and "--dlq-topic=acme.payment-processor.dlq" in args
    env = {e["name"]: e.get("value") for e in one(docs, "Job", "-topics")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PAYSTREAM_TOPICS__PAYMENTS_REQUESTED"] == "acme.payments.requested.v1"
    args = one(render("default-install", "notifier.enabled=false"), "Job", "-topics")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--other-groups=analytics" in args

    # Creation off: no job, and the services create their own topics, laid out the same way.
    docs = render("production", "kafka.topics.create=false")
    assert not find(docs, "Job", "-topics")
    assert configmap_data(docs, "paystream-common")["PAYSTREAM_KAFKA__PROVISIONING__CREATE_TOPICS"] == "true"
    assert configmap_data(docs, "paystream-analytics")["PAYSTREAM_ANALYTICS__STATS_TOPIC_PARTITIONS"] == "12"
    assert configmap_data(docs, "paystream-notifier")["PAYSTREAM_NOTIFIER__RECEIPTS_TOPIC_PARTITIONS"] == "12"
    assert configmap_data(docs, "paystream-payment-processor")["PAYSTREAM_CONSUMER__RETRY_TOPIC_PARTITIONS"] == "3"


def test_config_file_carries_properties_topic_configs_and_secret_properties():
    """The config init container's script, run here: the secret property lands in the file as a
    TOML string, however awkward its value."""
    docs = render("production")
    password = 'pa"ss\\wo rd$(id)`id`\'ü'
    Container.secret_overrides = {"KAFKA_SECRET_PROPERTY_0": password}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for kind, name, component, template in workloads(docs):
                if component == "migrations":
                    continue
                c = Container(docs, template, template["spec"]["containers"][0], os.path.join(tmp, name))
                config = tomllib.loads(c.files[c.env["PAYSTREAM_CONFIG_FILE"]])
                assert config["kafka"]["properties"] == {
                    "security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512",
                    "sasl.username": "paystream", "ssl.endpoint.identification.algorithm": "https",
                    "ssl.ca.location": "/etc/paystream/kafka-ca/ca.crt", "sasl.password": password}, name
                assert config["kafka"]["provisioning"]["configs"] == {
                    "min.insync.replicas": "2", "retention.ms": "604800000"}, name
    finally:
        Container.secret_overrides = {}
    # The password is in no rendered document.
    for d in docs:
        assert "from-secret" not in str(d)
    for secret in find(docs, "Secret", "config"):
        lines = secret["stringData"]["config.toml"].splitlines()
        assert not [line for line in lines if line.startswith('"sasl.password"')]


def test_no_config_file_without_kafka_settings():
    docs = render("default-install")
    assert not find(docs, "Secret", "-config")
    for kind, name, component, template in workloads(docs):
        env = [e["name"] for c in template["spec"]["containers"] for e in c.get("env") or []]
        assert "PAYSTREAM_CONFIG_FILE" not in env, name


def test_hook_jobs_do_not_depend_on_release_resources():
    """Hooks run before the release's ServiceAccount, ConfigMaps and Secrets exist."""
    docs = render("all-on")
    release_secrets = {d["metadata"]["name"] for d in find(docs, "Secret")
                       if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})}
    for job in find(docs, "Job"):
        spec = job["spec"]["template"]["spec"]
        assert "serviceAccountName" not in spec, job["metadata"]["name"]
        used = set()
        for c in spec["containers"] + (spec.get("initContainers") or []):
            assert not c.get("envFrom"), job["metadata"]["name"]
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    used.add(ref["name"])
        for v in spec.get("volumes") or []:
            if "secret" in v:
                used.add(v["secret"]["secretName"])
        assert not used & release_secrets, (job["metadata"]["name"], used & release_secrets)


def test_package_leaves_the_test_values_out():
    from deploy_helpers import CHART, helm
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([helm(), "package", CHART, "-d", tmp], check=True, capture_output=True)
        [archive] = os.listdir(tmp)
        listing = subprocess.run(["tar", "-tzf", os.path.join(tmp, archive)], check=True,
                                 capture_output=True, text=True).stdout.split()
    assert "paystream/values.schema.json" in listing and "paystream/README.md" in listing
    assert not [p for p in listing if p.startswith("paystream/ci/")]
