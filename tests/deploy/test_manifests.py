"""The Kubernetes manifests `mosaic manifests` renders: valid against the API schemas, and holding
the invariants a deployment relies on, for every service of the registry (and one added to it).

No cluster and no network: the schemas are kubernetes-validate's bundled ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
import yaml

from mosaic_devstack import manifests, nats_auth
from mosaic_devstack.cli import main
from mosaic_devstack.services import SERVICES, Service, load_services
from mosaic_gateway.config import parse_config

OVERLAYS = ("dev", "prod")
# Custom resources have no schema in kubernetes-validate (it knows the core API only): their
# content is checked by the assertions of test_postgres_cluster instead.
CUSTOM_KINDS = {"Cluster"}

Resource = dict[str, Any]


def _render(services: tuple[Service, ...], overlay: str, out: Path) -> dict[str, Resource]:
    manifests.write(services, manifests.load_overlay(overlay), out)
    return {
        path.name: yaml.safe_load(path.read_text())
        for path in sorted(out.glob("*.yaml"))
        if path.name != "kustomization.yaml"
    }


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("k8s") / request.param
    return request.param, out, _render(SERVICES, request.param, out)


def _of_kind(resources: dict[str, Resource], kind: str) -> dict[str, Resource]:
    return {r["metadata"]["name"]: r for r in resources.values() if r["kind"] == kind}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_core_manifests_pass_strict_schema_validation(rendered: Any) -> None:
    _, _, resources = rendered
    version = kubernetes_validate.latest_version()
    checked = 0
    for name, resource in resources.items():
        if resource["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {exc.message}")
        checked += 1
    assert checked >= 30


def test_kustomization_lists_every_file_and_no_secret(rendered: Any) -> None:
    overlay, out, resources = rendered
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == manifests.load_overlay(overlay).namespace
    assert sorted(kustomization["resources"]) == sorted(resources)
    # Secrets are the operator's to create: only named, never rendered.
    assert not _of_kind(resources, "Secret")
    assert all(manifests.file_name(r) == name for name, r in resources.items())


def test_every_deployment_is_probed_sized_non_root_budgeted_policed_and_scaled(
    rendered: Any,
) -> None:
    _, _, resources = rendered
    deployments = _of_kind(resources, "Deployment")
    assert set(deployments) == {s.name for s in SERVICES} | {"gateway"}
    pdbs = _of_kind(resources, "PodDisruptionBudget").values()
    policies = _of_kind(resources, "NetworkPolicy").values()
    hpas = _of_kind(resources, "HorizontalPodAutoscaler").values()
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]
        labels = pod["metadata"]["labels"]
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False
        assert spec["serviceAccountName"] in _of_kind(resources, "ServiceAccount")
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in container, f"{name}: no {probe}"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), name
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True
            assert security["runAsUser"] == 10001
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"]["drop"] == ["ALL"]
            # Out of the endpoints before the drain begins.
            assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/tmp"] == "tmp"
        assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in spec["volumes"]
        assert any(_matches(p["spec"]["selector"]["matchLabels"], labels) for p in pdbs), name
        assert any(
            _matches(p["spec"]["podSelector"].get("matchLabels", {}), labels)
            and p["metadata"]["name"] != "default-deny"
            for p in policies
        ), f"{name}: no NetworkPolicy allows its traffic"
        assert any(
            h["spec"]["scaleTargetRef"]
            == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
            for h in hpas
        ), name
        # Left to the HPA: a count here would be reset by every apply.
        assert "replicas" not in deployment["spec"]


def test_network_policies_deny_by_default_and_open_the_paths(rendered: Any) -> None:
    _, _, resources = rendered
    policies = _of_kind(resources, "NetworkPolicy")
    assert policies["default-deny"]["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
    }
    for service in SERVICES:
        policy = policies[service.name]["spec"]
        assert policy["ingress"][0]["from"] == [
            {"podSelector": {"matchLabels": manifests._GATEWAY_PODS}}
        ]
        ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
        assert {4222, 5432, 6379, 53} <= ports
    gateway = policies["gateway"]["spec"]
    assert "from" not in gateway["ingress"][0]  # the entry point: anyone reaching the Service
    assert {"nats", "postgres"} <= set(policies)


def test_every_required_setting_is_supplied(rendered: Any) -> None:
    _, _, resources = rendered
    configs = _of_kind(resources, "ConfigMap")
    digests = set()
    for service in SERVICES:
        fields = manifests.settings_class(service).model_fields
        required = {name.upper() for name, info in fields.items() if info.is_required()}
        # What the service refuses to run without although its class has a default: the
        # registry's secrets, and DATABASE_URL (`serve` will not guess a database).
        required |= set(service.secrets) | {"DATABASE_URL"}
        deployment = _of_kind(resources, "Deployment")[service.name]
        spec = deployment["spec"]["template"]["spec"]
        container = spec["containers"][0]
        config = configs[f"{service.name}-config"]["data"]
        assert container["envFrom"] == [{"configMapRef": {"name": f"{service.name}-config"}}]
        secret = next(v["secret"] for v in spec["volumes"] if v["name"] == "secrets")
        mount = next(m for m in container["volumeMounts"] if m["name"] == "secrets")
        assert mount["mountPath"] == config["SECRETS_DIR"]
        files = {item["path"] for item in secret["items"]}
        env = {e["name"] for e in container["env"]}
        supplied = set(config) | env | files
        assert required <= supplied, f"{service.name}: missing {required - supplied}"
        outside = {"SECRETS_DIR", "POD_IP", "PYTHONDONTWRITEBYTECODE"}
        assert set(config) | env <= {n.upper() for n in fields} | outside, (
            f"{service.name}: a variable no setting reads"
        )
        # Streams on every node of the 3-server NATS release, so a lost node loses no event.
        assert config["NATS_STREAM_REPLICAS"] == "3"
        assert config["DB_SCHEMA"] == service.schema
        # A changed ConfigMap changes the pod template, so the pods restart to read it.
        digests.add(
            deployment["spec"]["template"]["metadata"]["annotations"]["mosaic.dev/config-sha256"]
        )
        assert config["HOST"] == "0.0.0.0"
        # Discovery hands the gateway this address: the pod's own.
        by_name = {e["name"]: e for e in container["env"]}
        assert by_name["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert by_name["ADVERTISE_URL"]["value"] == f"http://$(POD_IP):{config['PORT']}"
        assert secret["secretName"] == f"{service.name}-secrets"
        # The kubelet waits out the preStop pause and the service's drain before it kills it.
        pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        drain = fields["shutdown_grace"].default
        assert spec["terminationGracePeriodSeconds"] > pause + drain, service.name
    # Each service's ConfigMap differs (SERVICE_NAME at least), and so must its digest.
    assert len(digests) == len(SERVICES)


def test_images_are_named_consistently(rendered: Any) -> None:
    name, _, resources = rendered
    overlay = manifests.load_overlay(name)
    pods = [
        (r["metadata"]["name"], r["spec"]["template"]["spec"])
        for r in resources.values()
        if r["kind"] in ("Deployment", "Job")
    ]
    for owner, spec in pods:
        for container in spec["containers"]:
            image = container["image"]
            expected = f"{overlay.registry}/mosaic-{container['name']}:{overlay.tag}"
            assert image == expected, owner
            assert container["args"][0] in ("serve", "migrate")


def test_each_migrating_service_has_a_migration_job(rendered: Any) -> None:
    _, _, resources = rendered
    jobs = _of_kind(resources, "Job")
    for service in SERVICES:
        job = next(j for n, j in jobs.items() if n.startswith(f"{service.name}-migrate-"))
        spec = job["spec"]["template"]["spec"]
        assert spec["containers"][0]["args"] == ["migrate"]
        assert spec["restartPolicy"] == "OnFailure"
        assert spec["automountServiceAccountToken"] is False


def test_gateway_config_is_the_generated_one_and_valid(rendered: Any) -> None:
    _, _, resources = rendered
    text = _of_kind(resources, "ConfigMap")["gateway-config"]["data"]["gateway.yaml"]
    config = parse_config(text, "gateway.yaml")
    assert set(config.backends) == {s.name for s in SERVICES}
    for name, backend in config.backends.items():
        assert backend.discovery is not None, name
        assert backend.discovery.nats is not None, name
    assert config.server.admin is not None
    assert config.server.admin.listen == "0.0.0.0"
    deployment = _of_kind(resources, "Deployment")["gateway"]["spec"]["template"]["spec"]
    container = deployment["containers"][0]
    assert container["args"][:3] == ["serve", "--config", "/etc/mosaic-gateway/gateway.yaml"]
    # The kubelet waits out the preStop pause and the drain before it kills the gateway.
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = config.server.timeouts.shutdown_grace
    assert deployment["terminationGracePeriodSeconds"] > pause + drain


def test_postgres_cluster(rendered: Any) -> None:
    name, _, resources = rendered
    overlay = manifests.load_overlay(name)
    cluster = _of_kind(resources, "Cluster")["mosaic-pg"]
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    spec = cluster["spec"]
    assert spec["instances"] == overlay.pg_instances
    assert spec["storage"]["size"] == overlay.pg_storage
    assert spec["bootstrap"]["initdb"]["database"] == "mosaic"
    roles = {r["name"]: r for r in spec["managed"]["roles"]}
    for service in SERVICES:
        role = roles[service.name]
        assert role["login"] is True
        assert role["ensure"] == "present"
        assert role["passwordSecret"] == {"name": f"{service.name}-db"}
        assert role["inRoles"] == [manifests.PG_SERVICES_ROLE]


def test_a_service_added_to_the_registry_gets_its_full_set(tmp_path: Path) -> None:
    registry = tmp_path / "services.json"
    extra = {"name": "notes", "command": ["mosaic-notes"], "schema": "notes", "secrets": ["X_KEY"]}
    registry.write_text(
        json.dumps([{"name": "auth", "command": ["mosaic-auth"], **_auth()}, extra])
    )
    resources = _render(load_services(registry), "prod", tmp_path / "out")
    for kind in (
        "serviceaccount",
        "configmap",
        "deployment",
        "service",
        "poddisruptionbudget",
        "horizontalpodautoscaler",
        "networkpolicy",
    ):
        name = "notes-config" if kind == "configmap" else "notes"
        assert f"{kind}-{name}.yaml" in resources
    assert "job-notes-migrate-0-1-0.yaml" in resources
    roles = [r["name"] for r in resources["cluster-mosaic-pg.yaml"]["spec"]["managed"]["roles"]]
    assert roles == ["auth", "notes"]
    guide = (tmp_path / "out" / "create-secrets.sh").read_text()
    assert "notes-secrets" in guide
    assert "X_KEY" in guide
    assert "notes-db" in guide
    volume = resources["deployment-notes.yaml"]["spec"]["template"]["spec"]["volumes"][1]
    assert [i["key"] for i in volume["secret"]["items"]] == [
        "DATABASE_URL",
        "NATS_PASSWORD",
        "X_KEY",
    ]
    # The new service is a NATS user too, its password read from its own Secret.
    users = manifests.nats_values(load_services(registry))["config"]["merge"]["authorization"]
    assert "notes" in {u["user"] for u in users["users"]}


def _auth() -> dict[str, Any]:
    auth = next(s for s in SERVICES if s.name == "auth")
    return {"definition": auth.definition, "schema": auth.schema, "secrets": list(auth.secrets)}


def test_cli_renders_and_refuses_an_unknown_overlay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["manifests", "--overlay", "staging", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "unknown overlay 'staging'" in error
    assert "dev, prod" in error
    assert not out.exists()
    assert main(["manifests", "--overlay", "dev", "--out", str(out)]) == 0
    assert (out / "kustomization.yaml").is_file()
    # An earlier render is replaced; a folder that is not one is left alone.
    (out / "deployment-gone.yaml").write_text("stale")
    assert main(["manifests", "--overlay", "dev", "--out", str(out)]) == 0
    assert not (out / "deployment-gone.yaml").exists()
    assert (out / "kustomization.yaml").is_file()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    assert main(["manifests", "--overlay", "dev", "--out", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine" / "keep.txt").read_text() == "x"


def _pod(resource: Resource) -> dict[str, Any]:
    spec: dict[str, Any] = resource["spec"]["template"]["spec"]
    return spec


def _mounted_secret(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == manifests.SECRETS_DIR)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    secret: dict[str, Any] = volume["secret"]
    return secret


def test_every_service_pod_connects_as_its_own_nats_user(rendered: Any) -> None:
    _, _, resources = rendered
    configs = _of_kind(resources, "ConfigMap")
    pods = {
        name: _pod(r)
        for name, r in {**_of_kind(resources, "Deployment"), **_of_kind(resources, "Job")}.items()
    }
    for service in SERVICES:
        config = configs[f"{service.name}-config"]["data"]
        assert config["NATS_USER"] == service.name
        assert config["NATS_INBOX_PREFIX"] == f"_INBOX_{service.name}"
        mine = [pod for name, pod in pods.items() if name.split("-migrate-")[0] == service.name]
        assert mine, service.name
        for pod in mine:
            secret = _mounted_secret(pod, pod["containers"][0])
            # Its own Secret's password, at SECRETS_DIR/NATS_PASSWORD.
            assert secret["secretName"] == f"{service.name}-secrets"
            assert {"key": "NATS_PASSWORD", "path": "NATS_PASSWORD"} in secret["items"]


def test_the_gateway_names_its_nats_user_and_mounts_its_password(rendered: Any) -> None:
    _, _, resources = rendered
    text = _of_kind(resources, "ConfigMap")["gateway-config"]["data"]["gateway.yaml"]
    nats = yaml.safe_load(text)["nats"]
    assert nats == {
        "url": manifests.NATS_URL,
        "user": "gateway",
        "password_file": f"{manifests.SECRETS_DIR}/NATS_PASSWORD",
        "inbox_prefix": "_INBOX_gateway",
    }
    pod = _pod(_of_kind(resources, "Deployment")["gateway"])
    secret = _mounted_secret(pod, pod["containers"][0])
    assert secret["secretName"] == "gateway-secrets"
    assert secret["items"] == [{"key": "NATS_PASSWORD", "path": "NATS_PASSWORD"}]


def test_nats_values_hold_the_users_of_mosaic_up_and_no_password(rendered: Any) -> None:
    _, out, _ = rendered
    values = yaml.safe_load((out / manifests.NATS_VALUES).read_text())
    expected = nats_auth.users(SERVICES)
    users = values["config"]["merge"]["authorization"]["users"]
    assert [u["user"] for u in users] == list(expected)
    env = values["container"]["env"]
    guide = (out / "create-secrets.sh").read_text()
    for entry in users:
        user = entry["user"]
        variable = f"NATS_PASSWORD_{user.upper()}"
        # The chart writes `<< $X >>` unquoted: the server reads the variable, set from a Secret.
        assert entry["password"] == f"<< ${variable} >>"
        granted = expected[user]
        assert entry.get("permissions") == (granted.to_json() if granted else None)
        ref = env[variable]["valueFrom"]["secretKeyRef"]
        assert ref["key"] == "NATS_PASSWORD"
        # create-secrets.sh makes that Secret with a generated password, never a literal.
        line = next(line for line in guide.splitlines() if f"secret generic {ref['name']}" in line)
        index = guide.index(line)
        block = guide[index : guide.find("\n\n", index)]
        assert 'NATS_PASSWORD="n$(openssl rand -hex 32)"' in block
    assert set(env) == {f"NATS_PASSWORD_{u.upper()}" for u in expected}


def test_auth_is_told_the_public_gateway_url(rendered: Any) -> None:
    overlay, _, resources = rendered
    url = manifests.load_overlay(overlay).public_url
    assert url
    config = _of_kind(resources, "ConfigMap")
    assert config["auth-config"]["data"]["AUTH_PUBLIC_URL"] == url.rstrip("/")
    assert "AUTH_PUBLIC_URL" not in config["blog-config"]["data"]
