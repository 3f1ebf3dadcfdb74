"""Create a RayJob from a template, with the pod's service account: the nightly CronJob's step.

    python create_rayjob.py /rayjob/rayjob-separate.yaml

Runs inside the CronJob's pod (see nightly-separate.yaml) with nothing but the Python
standard library and PyYAML (both in every Ray image). The template's ``metadata.name``
becomes a ``generateName`` prefix, so every run creates a new RayJob, labelled with
the CronJob that made it.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import urllib.request
from typing import Any

import yaml

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
CREATED_BY = "app.kubernetes.io/created-by"


def rayjob_from_template(template: dict[str, Any], created_by: str) -> dict[str, Any]:
    """The RayJob to create: the template with a generated name and a label; spec unchanged."""
    if template.get("kind") != "RayJob":
        raise ValueError(f"the template is a {template.get('kind')}, not a RayJob")
    meta = dict(template.get("metadata") or {})
    name = meta.pop("name", None) or created_by
    meta["generateName"] = meta.get("generateName") or f"{name}-"
    meta["labels"] = {**(meta.get("labels") or {}), CREATED_BY: created_by}
    return {**template, "metadata": meta}


def create(rayjob: dict[str, Any]) -> str:
    """POST the RayJob to this pod's API server; returns the name it got."""
    namespace = open(f"{SERVICE_ACCOUNT}/namespace").read().strip()
    token = open(f"{SERVICE_ACCOUNT}/token").read().strip()
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    url = f"https://{host}:{port}/apis/ray.io/v1/namespaces/{namespace}/rayjobs"
    request = urllib.request.Request(
        url, data=json.dumps(rayjob).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    context = ssl.create_default_context(cafile=f"{SERVICE_ACCOUNT}/ca.crt")
    with urllib.request.urlopen(request, context=context, timeout=60) as response:
        return str(json.load(response)["metadata"]["name"])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: create_rayjob.py TEMPLATE.yaml", file=sys.stderr)
        return 2
    with open(args[0]) as fh:
        template = yaml.safe_load(fh)
    created_by = os.environ.get("CREATED_BY", "sep-separate-nightly")
    name = create(rayjob_from_template(template, created_by))
    print(f"created RayJob {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
