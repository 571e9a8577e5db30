"""deploy/kubernetes/: every manifest parses, validates against the Kubernetes API schema
(kubernetes-validate, strict: unknown fields are errors), and agrees with the resolver:

- the resolver YAML in each ConfigMap passes the real config loader (a fleet.secret_file must be
  on a read-only Secret volume; the test puts a key of its own in its place);
- the container's --config path is where that ConfigMap is mounted;
- container ports match the config's listen and metrics ports;
- probes and scrape annotations point at paths the admin server really serves, on the metrics port;
- the sidecar pod's resolv.conf names the sidecar's listen address, the node-local pod's listen
  address is the link-local one its init container configures.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from resolver.app import App
from resolver.config import Config, parse_config
from resolver.ops.admin import Gate
from tests.support import dockerfile as df
from tests.support.process import resolv_conf

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))
K8S_VERSION = "1.30.0"  # native sidecars (restartPolicy on init containers) are on by default from 1.29
WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet", "Pod")
CRD_GROUPS = ("monitoring.coreos.com/",)



class _Served:
    """What the metrics listener answers a scraper or a kubelet (a pod-network address)."""

    def __init__(self):
        self.app = App(Config(upstreams=(parse_config({"upstreams": ["127.0.0.1:1053"]}).upstreams)))
        self.app.ready = True

    def handle(self, method: str, path: str):
        return self.app.http_routes.handle(method, path, peer="10.1.2.3", gate=Gate(False), listener="metrics")


SERVED = _Served()


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


ALL_DOCS = [(path.name, i, doc) for path in MANIFESTS for i, doc in enumerate(documents(path))]


def test_manifests_exist():
    names = {path.name for path in MANIFESTS}
    assert {"sidecar.yaml", "node-local.yaml", "podmonitor.yaml"} <= names
    kinds = {doc["kind"] for _, _, doc in ALL_DOCS}
    assert {"ConfigMap", "Deployment", "DaemonSet", "PodMonitor"} <= kinds


@pytest.mark.parametrize("name, index, doc", ALL_DOCS, ids=[f"{n}:{i}:{d['kind']}" for n, i, d in ALL_DOCS])
def test_manifest_is_valid_for_the_api(name, index, doc):
    if doc["apiVersion"].startswith(CRD_GROUPS):
        # No schema for CRDs here: check the fields Prometheus Operator needs.
        assert doc["kind"] == "PodMonitor" and doc["metadata"]["name"]
        assert doc["spec"]["selector"] and doc["spec"]["podMetricsEndpoints"]
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_validation_can_fail():
    doc = next(d for _, _, d in ALL_DOCS if d["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(doc))
    broken["spec"]["template"]["spec"]["dnsPolicie"] = "None"  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def pod_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]


def pod_metadata(doc: dict) -> dict:
    return doc["metadata"] if doc["kind"] == "Pod" else doc["spec"]["template"]["metadata"]


def resolver_containers(spec: dict) -> list[dict]:
    everything = spec.get("initContainers", []) + spec.get("containers", [])
    return [c for c in everything if c["image"].split(":")[0].rsplit("/", 1)[-1] == "resolver"]


def workloads() -> list[tuple[str, dict, list[dict]]]:
    out = []
    for path in MANIFESTS:
        docs = documents(path)
        for doc in docs:
            if doc["kind"] in WORKLOADS and resolver_containers(pod_spec(doc)):
                out.append((path.name, doc, docs))
    return out


WORKLOADS_FOUND = workloads()
IDS = [f"{name}:{doc['metadata']['name']}" for name, doc, _ in WORKLOADS_FOUND]


def test_both_examples_are_found():
    assert {doc["kind"] for _, doc, _ in WORKLOADS_FOUND} >= {"Deployment", "DaemonSet"}


def embedded_config(doc: dict, docs: list[dict], container: dict, tmp_path) -> tuple[Config, dict]:
    """The resolver Config the container would load: follow --config to its volume's ConfigMap."""
    args = container.get("args") or df.last(df.parse(REPO / "Dockerfile"), "CMD").exec_form()
    config_path = args[args.index("--config") + 1]
    mount = next(m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod_spec(doc)["volumes"] if v["name"] == mount["name"])
    key = config_path[len(mount["mountPath"]) + 1:]
    namespace = doc["metadata"].get("namespace")
    cm = next(d for d in docs if d["kind"] == "ConfigMap"
              and d["metadata"]["name"] == volume["configMap"]["name"]
              and d["metadata"].get("namespace") == namespace)
    data = yaml.safe_load(cm["data"][key])
    fleet = data.get("fleet") or {}
    if fleet.get("secret_file"):
        # The shared key comes from a Secret the operator creates (never in a manifest):
        # it must be mounted from one, read-only; the loader reads a stand-in here.
        secret_path = fleet["secret_file"]
        secret_mount = next(m for m in container["volumeMounts"] if secret_path.startswith(m["mountPath"] + "/"))
        secret_volume = next(v for v in pod_spec(doc)["volumes"] if v["name"] == secret_mount["name"])
        assert "secret" in secret_volume and secret_mount.get("readOnly") is True, secret_path
        stand_in = tmp_path / "fleet.key"
        stand_in.write_text("0123456789abcdef" * 4)
        data = {**data, "fleet": {**fleet, "secret_file": str(stand_in)}}
    return parse_config(data, str(resolv_conf(tmp_path, "192.0.2.53"))), data


def port_number(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)


@pytest.mark.parametrize("name, doc, docs", WORKLOADS_FOUND, ids=IDS)
def test_ports_probes_and_scrape_annotations_match_the_config(name, doc, docs, tmp_path):
    for container in resolver_containers(pod_spec(doc)):
        config, _ = embedded_config(doc, docs, container, tmp_path)
        declared = {(p["containerPort"], p.get("protocol", "TCP")) for p in container["ports"]}
        for address in config.listen:
            assert {(address.port, "UDP"), (address.port, "TCP")} <= declared, address
        assert config.metrics.enabled
        metrics_port = config.metrics.listen.port
        assert port_number(container, "metrics") == metrics_port

        probes = {kind: container.get(kind) for kind in ("livenessProbe", "readinessProbe", "startupProbe")}
        assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for kind, probe in probes.items():
            if probe is None:
                continue
            get = probe["httpGet"]
            assert SERVED.handle("GET", get["path"])[0] == 200, (kind, get["path"])
            assert port_number(container, get["port"]) == metrics_port, kind
            # The kubelet probes the pod IP: the admin server must listen there.
            assert ipaddress.ip_address(config.metrics.listen.host).is_unspecified

        annotations = pod_metadata(doc)["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == metrics_port
        assert SERVED.handle("GET", annotations["prometheus.io/path"])[0] == 200


@pytest.mark.parametrize("name, doc, docs", WORKLOADS_FOUND, ids=IDS)
def test_resources_state_volume_and_hardening(name, doc, docs):
    spec = pod_spec(doc)
    for container in resolver_containers(spec):
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
        assert "memory" in container["resources"]["limits"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert "/var/lib/resolver" in mounts and not mounts["/var/lib/resolver"].get("readOnly")
        assert mounts["/etc/resolver"].get("readOnly") is True
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert set(sc["capabilities"].get("add", [])) <= {"NET_BIND_SERVICE"}


def test_sidecar_pod_resolves_through_the_sidecar(tmp_path):
    name, doc, docs = next(w for w in WORKLOADS_FOUND if w[0] == "sidecar.yaml")
    spec = pod_spec(doc)
    assert spec["dnsPolicy"] == "None"
    assert spec["dnsConfig"]["nameservers"] == ["127.0.0.1"]
    (container,) = resolver_containers(spec)
    config, _ = embedded_config(doc, docs, container, tmp_path)
    # glibc asks port 53 of the nameserver: the sidecar must listen exactly there.
    assert "127.0.0.1:53" in [str(a) for a in config.listen]
    # Native sidecar: starts (and passes its startup probe) before the application.
    assert container in spec.get("initContainers", []) and container["restartPolicy"] == "Always"
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    # Non-root on port 53 through the pod's unprivileged-port sysctl; the uid is the image's USER.
    sysctls = {s["name"]: s["value"] for s in spec["securityContext"]["sysctls"]}
    assert int(sysctls["net.ipv4.ip_unprivileged_port_start"]) <= 53
    user = df.last(df.parse(REPO / "Dockerfile"), "USER").args.split(":")[0]
    assert str(container["securityContext"]["runAsUser"]) == user
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_node_local_daemonset_listens_on_its_link_local_address(tmp_path):
    name, doc, docs = next(w for w in WORKLOADS_FOUND if w[0] == "node-local.yaml")
    spec = pod_spec(doc)
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "Default"  # the cache must not resolve through itself
    (container,) = resolver_containers(spec)
    config, _ = embedded_config(doc, docs, container, tmp_path)
    hosts = {a.host for a in config.listen}
    assert hosts == {"169.254.20.10"} and ipaddress.ip_address("169.254.20.10").is_link_local
    setup = " ".join(" ".join(c["command"]) for c in spec["initContainers"])
    assert "169.254.20.10/32" in setup
    for port in container["ports"]:  # host network: hostPort must equal containerPort
        assert port["hostPort"] == port["containerPort"]
    assert "NET_BIND_SERVICE" in container["securityContext"]["capabilities"]["add"]
    assert not any(str(u.host) == "169.254.20.10" for u in config.upstreams)


def test_podmonitor_selects_the_resolver_pods_by_port_name():
    (monitor,) = [d for _, _, d in ALL_DOCS if d["kind"] == "PodMonitor"]
    endpoint_ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    (selector,) = monitor["spec"]["selector"]["matchExpressions"]
    for _, doc, _ in WORKLOADS_FOUND:
        labels = pod_metadata(doc)["labels"]
        assert labels.get(selector["key"]) in selector["values"], doc["metadata"]["name"]
        for container in resolver_containers(pod_spec(doc)):
            assert endpoint_ports <= {p.get("name") for p in container["ports"]}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert SERVED.handle("GET", endpoint["path"])[0] == 200


@pytest.mark.parametrize("name, doc, docs", WORKLOADS_FOUND, ids=IDS)
def test_cache_snapshot_lives_on_the_writable_state_volume(name, doc, docs, tmp_path):
    """cache.persist must point into the writable state volume (the root filesystem is read-only)."""
    for container in resolver_containers(pod_spec(doc)):
        config, _ = embedded_config(doc, docs, container, tmp_path)
        path = config.cache.persist.path
        writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
        assert path and any(path.startswith(mount + "/") for mount in writable), (path, writable)


def test_fleet_example_points_the_resolvers_at_a_bounded_valkey(tmp_path):
    """fleet.yaml: the resolvers' fleet.url is the Valkey Service's fixed ClusterIP and port (they
    cannot resolve its name), the Service selects the Valkey pods, and Valkey's memory is bounded
    by an eviction policy that evicts (never refuses writes) with nothing persisted."""
    docs = documents(REPO / "deploy" / "kubernetes" / "fleet.yaml")
    (daemonset,) = [d for d in docs if d["kind"] == "DaemonSet"]
    (container,) = resolver_containers(pod_spec(daemonset))
    config, _ = embedded_config(daemonset, docs, container, tmp_path)
    (service,) = [d for d in docs if d["kind"] == "Service"]
    url = urlsplit(config.fleet.url)
    assert url.scheme == "redis" and url.hostname == service["spec"]["clusterIP"]
    (svc_port,) = service["spec"]["ports"]
    assert url.port == svc_port["port"]
    (valkey,) = [d for d in docs if d["kind"] == "Deployment"]
    assert service["spec"]["selector"].items() <= pod_metadata(valkey)["labels"].items()
    (vk,) = pod_spec(valkey)["containers"]
    assert port_number(vk, svc_port["targetPort"]) == 6379
    conf_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "resolver-fleet-valkey")
    settings = dict(line.split(None, 1) for line in conf_map["data"]["valkey.conf"].splitlines()
                    if line.strip() and not line.startswith("#"))
    assert settings["maxmemory-policy"] in ("volatile-ttl", "allkeys-lru")
    assert settings["maxmemory"] and settings["save"] == '""' and settings["appendonly"] == "no"
    assert settings["port"] == "6379"
    # The key is never shipped in the manifest.
    assert not [d for d in docs if d["kind"] == "Secret"]
