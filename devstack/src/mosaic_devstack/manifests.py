"""Kubernetes manifests from the service registry: `mosaic manifests --overlay dev|prod --out DIR`.

The same `services.toml` that `mosaic up` runs decides what is deployed, so a service added by
`mosaic new service` gets its Deployment, Service, migration Job and policies without an edit
here. An overlay (`deploy/k8s/overlays/<name>.toml`) holds what differs between clusters:
namespace, image registry and tag, replicas, resources, autoscaling bounds, PostgreSQL size.

The output is one YAML file per resource plus a `kustomization.yaml`, so `kubectl apply -k DIR`
applies it and users layer their own kustomize patches on top. No secret value is ever written:
the manifests name the Secrets the operator creates (the output's `create-secrets.sh` lists the
commands). docs/kubernetes.md explains the choices.

NATS: the release of the official chart (`deploy/k8s/nats-values.yaml`) runs with the users and
permissions of `mosaic up` (`nats_auth`) when installed with the rendered
`helm/nats-auth-values.yaml` too: its `authorization` block reads each password from the server's
environment, filled from the Secret holding that user's `NATS_PASSWORD` (the one the service's
pods mount as a file).

Discovery: the gateway finds instances through NATS (`gateway_config.backend_section`), as in the
devstack; each pod advertises `http://<pod IP>:<port>`, taken from the downward API.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mosaic_devstack import nats_auth
from mosaic_devstack.compose import NATS_PASSWORD, service_secret_keys
from mosaic_devstack.gateway_config import GatewaySettings, gateway_config, render
from mosaic_devstack.images import image_name
from mosaic_devstack.services import Service, openapi_documents

OVERLAYS = Path(__file__).resolve().parents[3] / "deploy" / "k8s" / "overlays"
"""Where the overlays live in the workspace (`--overlays DIR` for another place)."""

PORT = 8000
GATEWAY_PORT = 8080
GATEWAY_ADMIN_PORT = 9090
UID = 10001
SECRETS_DIR = "/var/run/secrets/mosaic"
GATEWAY_CONFIG_DIR = "/etc/mosaic-gateway"
# A pod's own emptyDir over a read-only root filesystem, not a shared host directory.
TMP = "/tmp"  # noqa: S108
PG_CLUSTER = "mosaic-pg"
PG_DATABASE = "mosaic"
# Each service's role is a member, so a service added later can create its schema in the
# database without a new grant (the grant is made once, at the cluster's bootstrap).
PG_SERVICES_ROLE = "mosaic_services"
NATS_URL = "nats://nats:4222"
PART_OF = "mosaic"
GATEWAY = "gateway"
NATS_ADMIN_SECRET = "nats-admin"  # noqa: S105 (a Secret's name, not a value)
"""The Secret of the unrestricted `mosaic` NATS user (the operator's tools; no pod mounts it)."""
NATS_VALUES = Path("helm") / "nats-auth-values.yaml"

_NAME_LABEL = "app.kubernetes.io/name"
_COMPONENT_LABEL = "app.kubernetes.io/component"
_MOSAIC_LABELS = {"app.kubernetes.io/part-of": PART_OF}
"""On every resource of Mosaic (as a pod selector: all of its pods)."""


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class Sizing:
    """How many replicas (the HPA's bounds: the Deployment leaves its count to the HPA, or each
    `kubectl apply` would reset it) and how big each one is."""

    hpa_min: int
    hpa_max: int
    cpu_utilization: int
    resources: dict[str, dict[str, str]]


@dataclass(frozen=True)
class Overlay:
    name: str
    namespace: str
    environment: str
    registry: str
    tag: str
    pull_policy: str
    service: Sizing
    gateway: Sizing
    gateway_workers: int
    gateway_service_type: str
    public_url: str | None
    pg_instances: int
    pg_storage: str
    pg_storage_class: str | None
    per_service: dict[str, Sizing] = field(default_factory=dict)

    def image(self, name: str) -> str:
        return f"{self.registry.rstrip('/')}/{image_name(name)}:{self.tag}"

    def sizing(self, service: Service) -> Sizing:
        sizing = self.per_service.get(service.name, self.service)
        if service.replicas is not None:
            # The registry's fixed count (a singleton, say) wins over autoscaling.
            return Sizing(
                service.replicas, service.replicas, sizing.cpu_utilization, sizing.resources
            )
        return sizing


def overlay_names(overlays: Path = OVERLAYS) -> list[str]:
    return sorted(p.stem for p in overlays.glob("*.toml"))


def _sizing(raw: Mapping[str, Any], base: Sizing | None, where: str) -> Sizing:
    try:
        hpa = dict(raw.get("hpa", {}))
        resources = raw.get("resources", base.resources if base else None)
        if resources is None:
            raise ValueError("no resources")
        sizing = Sizing(
            hpa_min=int(hpa.get("min", base.hpa_min if base else 2)),
            hpa_max=int(hpa.get("max", base.hpa_max if base else 2)),
            cpu_utilization=int(hpa.get("cpu_utilization", base.cpu_utilization if base else 70)),
            resources={k: dict(v) for k, v in dict(resources).items()},
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise ManifestError(f"{where}: {exc}") from None
    if not 1 <= sizing.hpa_min <= sizing.hpa_max:
        raise ManifestError(f"{where}: hpa needs 1 <= min <= max")
    for kind in ("requests", "limits"):
        if not {"cpu", "memory"} <= set(sizing.resources.get(kind, {})):
            raise ManifestError(f"{where}: resources.{kind} needs cpu and memory")
    return sizing


def load_overlay(name: str, overlays: Path = OVERLAYS) -> Overlay:
    """The overlay `name` (`<overlays>/<name>.toml`); ManifestError naming the known ones."""
    path = overlays / f"{name}.toml"
    if "/" in name or not path.is_file():
        known = ", ".join(overlay_names(overlays)) or "none"
        raise ManifestError(f"unknown overlay {name!r} (known: {known}; in {overlays})")
    try:
        raw = tomllib.loads(path.read_text())
        service = _sizing(raw["service"], None, f"{path}: [service]")
        gateway = raw["gateway"]
        postgres = raw["postgres"]
        image = raw["image"]
        return Overlay(
            name=name,
            namespace=str(raw["namespace"]),
            environment=str(raw.get("environment", "prod")),
            registry=str(image["registry"]),
            tag=str(image["tag"]),
            pull_policy=str(image.get("pull_policy", "IfNotPresent")),
            service=service,
            gateway=_sizing(gateway, None, f"{path}: [gateway]"),
            gateway_workers=int(gateway.get("workers", 2)),
            gateway_service_type=str(gateway.get("service_type", "ClusterIP")),
            public_url=gateway.get("public_url"),
            pg_instances=int(postgres["instances"]),
            pg_storage=str(postgres["storage"]),
            pg_storage_class=postgres.get("storage_class"),
            per_service={
                svc: _sizing(values, service, f"{path}: [services.{svc}]")
                for svc, values in raw.get("services", {}).items()
            },
        )
    except (OSError, ValueError) as exc:
        raise ManifestError(f"cannot read overlay {path}: {exc}") from None
    except KeyError as exc:
        raise ManifestError(f"{path}: missing {exc}") from None


# --- what a service needs -----------------------------------------------------------------------


def settings_class(service: Service) -> type[Any]:
    """The service's settings class (the kit's base one when the registry names no definition)."""
    if service.definition is None:
        from mosaic_kit.settings import ServiceSettings

        return ServiceSettings
    settings: type[Any] = service.load_definition().settings
    return settings


def secret_name(service: Service) -> str:
    return f"{service.name}-secrets"


def db_secret_name(service: Service) -> str:
    return f"{service.name}-db"


# --- resources ----------------------------------------------------------------------------------


def _selector(name: str, component: str) -> dict[str, str]:
    return {_NAME_LABEL: name, _COMPONENT_LABEL: component}


def _labels(name: str, component: str) -> dict[str, str]:
    return {**_selector(name, component), **_MOSAIC_LABELS}


def _meta(name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {"name": name, "labels": dict(labels)}


def _security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
    }


def _pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_env() -> list[dict[str, Any]]:
    # The instance id and the advertised address are the pod's own, which only the downward API
    # knows: NATS discovery hands the gateway `http://<pod IP>:<port>`.
    return [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "ADVERTISE_URL", "value": f"http://$(POD_IP):{PORT}"},
    ]


def _secret_volume(service: Service) -> dict[str, Any]:
    # Listing the keys makes a Secret that lacks one fail the pod's start, loudly, instead of the
    # service running on a default.
    return {
        "name": "secrets",
        "secret": {
            "secretName": secret_name(service),
            "defaultMode": 0o400,
            "items": [{"key": key, "path": key} for key in service_secret_keys(service)],
        },
    }


def _service_container(
    service: Service, overlay: Overlay, args: list[str], sizing: Sizing
) -> dict[str, Any]:
    return {
        "name": service.name,
        "image": overlay.image(service.name),
        "imagePullPolicy": overlay.pull_policy,
        "args": args,
        "envFrom": [{"configMapRef": {"name": f"{service.name}-config"}}],
        "env": _pod_env(),
        "resources": sizing.resources,
        "securityContext": _security_context(),
        "volumeMounts": [
            {"name": "tmp", "mountPath": TMP},
            {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True},
        ],
    }


def _pod_spec(
    service_account: str, containers: list[dict[str, Any]], volumes: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "serviceAccountName": service_account,
        "automountServiceAccountToken": False,
        "securityContext": _pod_security_context(),
        "containers": containers,
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}, *volumes],
    }


def _probes(port: int | str) -> dict[str, Any]:
    def get(path: str, **timing: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": port}, "timeoutSeconds": 2, **timing}

    return {
        # Up to a minute to start (migrations are the Job's, not the pod's): only then do the
        # other two probes count.
        "startupProbe": get("/healthz", periodSeconds=2, failureThreshold=30),
        # Not ready while the database or NATS is lost: out of the Service, but not restarted.
        "readinessProbe": get("/readyz", periodSeconds=5, failureThreshold=2),
        "livenessProbe": get("/healthz", periodSeconds=10, failureThreshold=3),
    }


_PRE_STOP_SECONDS = 5
# The pod leaves the Service's endpoints and the gateway's discovery while it still serves: only
# then does SIGTERM start the drain, so no request is sent to a process already refusing them.
_PRE_STOP: dict[str, Any] = {"preStop": {"sleep": {"seconds": _PRE_STOP_SECONDS}}}


def _pdb(name: str, selector: Mapping[str, str], labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(name, labels),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(selector)}},
    }


def _hpa(name: str, sizing: Sizing, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(name, labels),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": sizing.hpa_min,
            "maxReplicas": sizing.hpa_max,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": sizing.cpu_utilization,
                        },
                    },
                }
            ],
        },
    }


def _deployment(
    name: str,
    labels: Mapping[str, str],
    selector: Mapping[str, str],
    pod: dict[str, Any],
    grace: int,
    config: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    template_meta: dict[str, Any] = {"labels": dict(labels)}
    if config is not None:
        # Variables are read once, at a process's start: a changed ConfigMap must roll the pods.
        digest = hashlib.sha256(json.dumps(dict(config), sort_keys=True).encode()).hexdigest()
        template_meta["annotations"] = {"mosaic.dev/config-sha256": digest[:16]}
    spread = {
        # Replicas on different nodes where the cluster allows, so one node's loss is not the
        # whole service's.
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": dict(selector)},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, labels),
        "spec": {
            "selector": {"matchLabels": dict(selector)},
            # A new pod is ready before an old one goes: capacity never drops during a rollout.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": template_meta,
                "spec": {
                    **pod,
                    "terminationGracePeriodSeconds": grace,
                    "topologySpreadConstraints": [spread],
                },
            },
        },
    }


def _service_account(name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(name, labels),
        "automountServiceAccountToken": False,
    }


def _k8s_service(
    name: str,
    labels: Mapping[str, str],
    selector: Mapping[str, str],
    port: int,
    target: int,
    kind: str = "ClusterIP",
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, labels),
        "spec": {
            "type": kind,
            "selector": dict(selector),
            "ports": [{"name": "http", "port": port, "targetPort": target, "protocol": "TCP"}],
        },
    }


def service_config(service: Service, overlay: Overlay) -> dict[str, str]:
    """The service's non-secret settings (its ConfigMap)."""
    config = {
        "SERVICE_NAME": service.name,
        "ENVIRONMENT": overlay.environment,
        "HOST": "0.0.0.0",
        "PORT": str(PORT),
        "LOG_FORMAT": "json",
        "NATS_URL": NATS_URL,
        # The NATS release runs three JetStream servers (nats-values.yaml): keep every event
        # stream on all three, so losing a node loses no event.
        "NATS_STREAM_REPLICAS": "3",
        # Its own NATS user (the password is in its Secret, mounted at SECRETS_DIR).
        **nats_auth.login_env(service.name),
        "SECRETS_DIR": SECRETS_DIR,
        # The root filesystem is read-only: no bytecode cache to write (the image compiles it).
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if service.schema is not None:
        config["DB_SCHEMA"] = service.schema
    if overlay.public_url and "auth_public_url" in settings_class(service).model_fields:
        # The endpoints auth names in its OAuth metadata are the gateway's public ones.
        config["AUTH_PUBLIC_URL"] = overlay.public_url.rstrip("/")
    return config


def service_resources(service: Service, overlay: Overlay) -> list[dict[str, Any]]:
    """Everything one service runs with: account, config, Deployment, Service, PDB, HPA, policy
    and (when it migrates) its migration Job."""
    name = service.name
    labels = _labels(name, "service")
    selector = _selector(name, "service")
    sizing = overlay.sizing(service)
    config = service_config(service, overlay)
    drain = int(settings_class(service).model_fields["shutdown_grace"].default)
    container = {
        **_service_container(service, overlay, ["serve"], sizing),
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        **_probes("http"),
        "lifecycle": _PRE_STOP,
    }
    resources: list[dict[str, Any]] = [
        _service_account(name, labels),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(f"{name}-config", labels),
            "data": config,
        },
        _deployment(
            name,
            labels,
            selector,
            _pod_spec(name, [container], [_secret_volume(service)]),
            _PRE_STOP_SECONDS + drain + 5,
            config,
        ),
        _k8s_service(name, labels, selector, PORT, PORT),
        _pdb(name, selector, labels),
        _hpa(name, sizing, labels),
        _service_policy(service),
    ]
    if service.migrate:
        resources.append(_migrate_job(service, overlay))
    return resources


def _migrate_job(service: Service, overlay: Overlay) -> dict[str, Any]:
    # Named after the tag: a Job's pod template cannot change, and each release migrates once.
    # Running it beside N replicas is safe: migrations take a per-schema advisory lock.
    labels = _labels(service.name, "migrate")
    container = _service_container(service, overlay, ["migrate"], overlay.sizing(service))
    tag = "".join(c if c.isalnum() else "-" for c in overlay.tag.lower()).strip("-")[:20]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(f"{service.name}-migrate-{tag or 'latest'}", labels),
        "spec": {
            "backoffLimit": 4,
            "activeDeadlineSeconds": 600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    **_pod_spec(service.name, [container], [_secret_volume(service)]),
                    "restartPolicy": "OnFailure",
                },
            },
        },
    }


# --- network policies ---------------------------------------------------------------------------

_DNS_EGRESS = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}
_NATS_PODS = {_NAME_LABEL: "nats"}
_PG_PODS = {"cnpg.io/cluster": PG_CLUSTER}
_REDIS_PODS = {_NAME_LABEL: "redis"}
_GATEWAY_PODS = _selector(GATEWAY, "gateway")


def _peer(labels: Mapping[str, str]) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": dict(labels)}}


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def _policy(
    name: str,
    selector: Mapping[str, str],
    ingress: list[dict[str, Any]],
    egress: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, _MOSAIC_LABELS),
        "spec": {
            "podSelector": {"matchLabels": dict(selector)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }


def _service_policy(service: Service) -> dict[str, Any]:
    # Selects the service's pods and its migration Job's alike (same name label).
    return _policy(
        service.name,
        {_NAME_LABEL: service.name},
        [{"from": [_peer(_GATEWAY_PODS)], "ports": _tcp(PORT)}],
        [
            {"to": [_peer(_NATS_PODS)], "ports": _tcp(4222)},
            {"to": [_peer(_PG_PODS)], "ports": _tcp(5432)},
            {"to": [_peer(_REDIS_PODS)], "ports": _tcp(6379)},
            _DNS_EGRESS,
        ],
    )


def _shared_policies() -> list[dict[str, Any]]:
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta("default-deny", _MOSAIC_LABELS),
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }
    nats = _policy(
        "nats",
        _NATS_PODS,
        [
            {"from": [_peer(_MOSAIC_LABELS)], "ports": _tcp(4222)},
            # Cluster routes between the servers, and their monitoring port for each other.
            {"from": [_peer(_NATS_PODS)], "ports": _tcp(4222, 6222, 8222)},
        ],
        [{"to": [_peer(_NATS_PODS)], "ports": _tcp(4222, 6222)}, _DNS_EGRESS],
    )
    postgres = _policy(
        "postgres",
        _PG_PODS,
        [
            {"from": [_peer(_MOSAIC_LABELS)], "ports": _tcp(5432)},
            {"from": [_peer(_PG_PODS)], "ports": _tcp(5432, 8000)},
            # The CloudNativePG operator asks each instance's manager for its status.
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "cnpg-system"}
                        }
                    }
                ],
                "ports": _tcp(8000),
            },
        ],
        [
            {"to": [_peer(_PG_PODS)], "ports": _tcp(5432, 8000)},
            # Each instance manager watches its Cluster through the Kubernetes API.
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": _tcp(443, 6443)},
            _DNS_EGRESS,
        ],
    )
    return [deny, nats, postgres]


# --- the gateway --------------------------------------------------------------------------------


def _gateway_settings(overlay: Overlay) -> GatewaySettings:
    return GatewaySettings(
        listen="0.0.0.0",
        port=GATEWAY_PORT,
        admin_port=GATEWAY_ADMIN_PORT,
        workers=overlay.gateway_workers,
        nats_url=NATS_URL,
        nats_user=nats_auth.GATEWAY,
        nats_password_file=f"{SECRETS_DIR}/{NATS_PASSWORD}",
        nats_inbox_prefix=nats_auth.inbox_prefix(nats_auth.GATEWAY),
    )


def gateway_secret_name() -> str:
    return f"{GATEWAY}-secrets"


def gateway_yaml(services: Sequence[Service], overlay: Overlay) -> str:
    """The gateway's configuration, from the services' OpenAPI documents built offline, through
    the same generation and validation as `mosaic up`'s."""
    config = gateway_config(_gateway_settings(overlay), openapi_documents(services))
    # The kubelet probes the pod's address, not its loopback.
    config["server"]["admin"]["listen"] = "0.0.0.0"
    header = (
        "# The gateway in front of the services, rendered by `mosaic manifests` from their\n"
        "# OpenAPI documents (x-mosaic-gateway). Schema: docs/gateway.md.\n"
    )
    return render(config, f"{GATEWAY_CONFIG_DIR}/gateway.yaml", header)


def gateway_resources(services: Sequence[Service], overlay: Overlay) -> list[dict[str, Any]]:
    labels = _labels(GATEWAY, "gateway")
    selector = _selector(GATEWAY, "gateway")
    sizing = overlay.gateway
    container = {
        "name": GATEWAY,
        "image": overlay.image(GATEWAY),
        "imagePullPolicy": overlay.pull_policy,
        "args": [
            "serve",
            "--config",
            f"{GATEWAY_CONFIG_DIR}/gateway.yaml",
            "--workers",
            str(overlay.gateway_workers),
            "--log-format",
            "json",
        ],
        "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
        "ports": [
            {"name": "http", "containerPort": GATEWAY_PORT, "protocol": "TCP"},
            {"name": "admin", "containerPort": GATEWAY_ADMIN_PORT, "protocol": "TCP"},
        ],
        **_probes("admin"),
        "lifecycle": _PRE_STOP,
        "resources": sizing.resources,
        "securityContext": _security_context(),
        "volumeMounts": [
            {"name": "tmp", "mountPath": TMP},
            {"name": "config", "mountPath": GATEWAY_CONFIG_DIR, "readOnly": True},
            {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True},
        ],
    }
    config_volume = {"name": "config", "configMap": {"name": f"{GATEWAY}-config"}}
    secret_volume = {
        "name": "secrets",
        "secret": {
            "secretName": gateway_secret_name(),
            "defaultMode": 0o400,
            "items": [{"key": NATS_PASSWORD, "path": NATS_PASSWORD}],
        },
    }
    policy = _policy(
        GATEWAY,
        selector,
        # The entry point: whoever the cluster lets reach the Service (a LoadBalancer, an
        # Ingress controller) may call it; the admin port stays for the kubelet's probes.
        [{"ports": _tcp(GATEWAY_PORT)}],
        [
            {"to": [_peer({_COMPONENT_LABEL: "service"})], "ports": _tcp(PORT)},
            {"to": [_peer(_NATS_PODS)], "ports": _tcp(4222)},
            _DNS_EGRESS,
        ],
    )
    return [
        _service_account(GATEWAY, labels),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(f"{GATEWAY}-config", labels),
            "data": {"gateway.yaml": gateway_yaml(services, overlay)},
        },
        _deployment(
            GATEWAY,
            labels,
            selector,
            _pod_spec(GATEWAY, [container], [config_volume, secret_volume]),
            # The gateway drains in its configuration's shutdown_grace after the pause.
            _PRE_STOP_SECONDS + int(_gateway_settings(overlay).shutdown_grace) + 10,
        ),
        _k8s_service(GATEWAY, labels, selector, 80, GATEWAY_PORT, overlay.gateway_service_type),
        _pdb(GATEWAY, selector, labels),
        _hpa(GATEWAY, sizing, labels),
        policy,
    ]


# --- PostgreSQL (CloudNativePG) -----------------------------------------------------------------


def postgres_cluster(services: Sequence[Service], overlay: Overlay) -> dict[str, Any]:
    """A CloudNativePG `Cluster`: one database, one login role per service that owns a schema
    (its password from the `<service>-db` Secret the operator creates)."""
    storage: dict[str, Any] = {"size": overlay.pg_storage}
    if overlay.pg_storage_class:
        storage["storageClass"] = overlay.pg_storage_class
    roles = [
        {
            "name": s.name,
            "ensure": "present",
            "login": True,
            "inRoles": [PG_SERVICES_ROLE],
            "passwordSecret": {"name": db_secret_name(s)},
        }
        for s in services
        if s.schema is not None
    ]
    return {
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Cluster",
        "metadata": _meta(PG_CLUSTER, _MOSAIC_LABELS),
        "spec": {
            "instances": overlay.pg_instances,
            "storage": storage,
            "bootstrap": {
                "initdb": {
                    "database": PG_DATABASE,
                    "owner": PG_DATABASE,
                    "postInitApplicationSQL": [
                        f"CREATE ROLE {PG_SERVICES_ROLE} NOLOGIN",
                        f"GRANT CONNECT, CREATE ON DATABASE {PG_DATABASE} TO {PG_SERVICES_ROLE}",
                    ],
                }
            },
            "managed": {"roles": roles},
        },
    }


# --- the whole folder ---------------------------------------------------------------------------


def render_all(services: Sequence[Service], overlay: Overlay) -> list[dict[str, Any]]:
    """Every resource of the overlay, in apply order (kustomize reorders by kind anyway)."""
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": _meta(overlay.namespace, _MOSAIC_LABELS),
    }
    resources = [namespace, *_shared_policies(), postgres_cluster(services, overlay)]
    for service in services:
        resources += service_resources(service, overlay)
    resources += gateway_resources(services, overlay)
    return resources


def file_name(resource: Mapping[str, Any]) -> str:
    return f"{resource['kind'].lower()}-{resource['metadata']['name']}.yaml"


def _nats_user_secret(user: str) -> str:
    """The Secret holding `user`'s NATS password under the key `NATS_PASSWORD`."""
    if user == nats_auth.ADMIN:
        return NATS_ADMIN_SECRET
    if user == nats_auth.GATEWAY:
        return gateway_secret_name()
    return f"{user}-secrets"


def nats_values(services: Sequence[Service]) -> dict[str, Any]:
    """Values for the NATS chart, given after nats-values.yaml: the users of `nats_auth`, each
    password a `$NATS_PASSWORD_<USER>` variable (the chart writes `<< ... >>` unquoted) that
    the server reads from its environment, filled from the user's Secret."""
    users = []
    env: dict[str, Any] = {}
    for user, granted in nats_auth.users(services).items():
        variable = nats_auth.password_variable(user)
        entry: dict[str, Any] = {"user": user, "password": f"<< ${variable} >>"}
        if granted is not None:
            entry["permissions"] = granted.to_json()
        users.append(entry)
        env[variable] = {
            "valueFrom": {"secretKeyRef": {"name": _nats_user_secret(user), "key": NATS_PASSWORD}}
        }
    return {"config": {"merge": {"authorization": {"users": users}}}, "container": {"env": env}}


# NATS reads a variable's value from the environment as configuration text: a password of
# digits (or `true`) would not be a string. A leading letter keeps it one.
_NATS_PASSWORD_COMMAND = '"n$(openssl rand -hex 32)"'  # noqa: S105 (a command, not a value)


def secrets_guide(services: Sequence[Service], overlay: Overlay) -> str:
    """The `kubectl create secret` commands for this overlay (values left to the operator,
    the NATS passwords generated by the commands themselves)."""
    ns = overlay.namespace
    lines = [
        f"# Secrets to create before `kubectl apply -k` (namespace {ns}); see docs/kubernetes.md.",
        "# Nothing here holds a value: generate each one, e.g.",
        "#   python -c 'import secrets; print(secrets.token_urlsafe(32))'",
        "# The NATS passwords are generated here; the NATS servers read them from the same",
        "# Secrets (helm/nats-auth-values.yaml). Create these before installing NATS.",
        "",
    ]
    for s in services:
        upper = s.name.upper()
        lines.append(f"# {s.name}")
        if s.schema is not None:
            lines.append(
                f"kubectl -n {ns} create secret generic {db_secret_name(s)} "
                f"--type=kubernetes.io/basic-auth --from-literal=username={s.name} "
                f'--from-literal=password="${upper}_DB_PASSWORD"'
            )
        parts = [f"kubectl -n {ns} create secret generic {secret_name(s)}"]
        for key in service_secret_keys(s):
            if key == "DATABASE_URL":
                value = (
                    f"postgresql://{s.name}:${upper}_DB_PASSWORD@{PG_CLUSTER}-rw:5432/{PG_DATABASE}"
                )
            elif key == NATS_PASSWORD:
                parts.append(f"--from-literal={key}={_NATS_PASSWORD_COMMAND}")
                continue
            else:
                value = f"${key}"
            parts.append(f'--from-literal={key}="{value}"')
        lines += [" \\\n    ".join(parts), ""]
    for user, secret in (
        (nats_auth.GATEWAY, gateway_secret_name()),
        (nats_auth.ADMIN, NATS_ADMIN_SECRET),
    ):
        lines += [
            f"# NATS user {user}",
            f"kubectl -n {ns} create secret generic {secret} "
            f"--from-literal={NATS_PASSWORD}={_NATS_PASSWORD_COMMAND}",
            "",
        ]
    return "\n".join(lines)


def _dump(resource: Mapping[str, Any]) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def literal(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
        # The gateway's configuration stays readable in its ConfigMap.
        style = "|" if "\n" in text else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)

    Dumper.add_representer(str, literal)
    return yaml.dump(dict(resource), Dumper=Dumper, sort_keys=False, width=100)


def write(services: Sequence[Service], overlay: Overlay, out: Path) -> list[Path]:
    """Render into `out` (replacing what an earlier render left there); the files written."""
    resources = render_all(services, overlay)  # everything first: a failure writes nothing
    files = {file_name(r): _dump(r) for r in resources}
    if len(files) != len(resources):
        raise ManifestError("two resources would share a file name")
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": overlay.namespace,
        "labels": [{"pairs": {"app.kubernetes.io/instance": f"mosaic-{overlay.name}"}}],
        "resources": list(files),
    }
    header = (
        f"# Rendered by `mosaic manifests --overlay {overlay.name}` from the service registry and\n"
        f"# deploy/k8s/overlays/{overlay.name}.toml: edit those, not this folder (it is replaced).\n"
    )
    if out.exists() and any(out.iterdir()):
        previous = out / "kustomization.yaml"
        # Only a folder an earlier render wrote is replaced: `--out .` must not wipe a checkout.
        if not previous.is_file() or "mosaic manifests" not in previous.read_text():
            raise ManifestError(f"{out} is not empty and was not rendered by mosaic manifests")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in {
        **files,
        "kustomization.yaml": header + _dump(kustomization),
        "create-secrets.sh": secrets_guide(services, overlay),
        str(NATS_VALUES): (
            "# Rendered by `mosaic manifests`: the NATS users and permissions, after\n"
            "# deploy/k8s/nats-values.yaml (docs/kubernetes.md). Holds no password.\n"
            + _dump(nats_values(services))
        ),
    }.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
