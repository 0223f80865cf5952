"""The services' Dockerfiles: each is the scaffold's template filled in for the service, so the
ones in the tree and the one `mosaic new service` writes cannot drift apart (docs/containers.md).
The gateway's Dockerfile is written by hand: it serves a configuration file, not the chassis."""

from __future__ import annotations

from mosaic_devstack.scaffold import TEMPLATES, Names, _fill

__all__ = ["DOCKERFILE_TEMPLATE", "image_name", "service_dockerfile"]

DOCKERFILE_TEMPLATE = TEMPLATES / "services" / "{{name}}" / "Dockerfile.tmpl"


def image_name(name: str) -> str:
    """`mosaic-<name>`, the image of a service or of the gateway (the manifests add a registry
    and a tag in front and behind)."""
    return f"mosaic-{name}"


def service_dockerfile(name: str) -> str:
    """The text of `services/<name>/Dockerfile`."""
    # As `mosaic new service` fills it, with no date: a Dockerfile rendered later is identical.
    return _fill(DOCKERFILE_TEMPLATE.read_text(), Names(name).placeholders(""))
