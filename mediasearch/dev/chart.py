"""The Helm chart, checked offline: rendered with Helm's own engine, validated, policed.

``python -m mediasearch.dev.chart`` (``make chart``) renders every profile of ``helm/mediasearch``
(``values.yaml``: GPU production; ``profiles/cpu.yaml``; ``profiles/minimal.yaml``) with
``helm-python-sdk`` (Helm's Go library; Debian has no ``helm``), and once more the GPU profile
with the one-off Jobs (backfill, reindex: :data:`ONE_OFF_JOBS`) enabled; checks the values against
``values.schema.json``, validates every document with ``kubernetes-validate`` in strict mode,
applies the chart's policies (:func:`policy_problems`), runs ``checkov`` (from its own venv,
``.venv-checkov``) and, with ``--wiring``, the wiring test (:mod:`mediasearch.dev.chart_wiring`).
It ends with one line::

    chart: profiles=3 documents=... schema_errors=0 validate_errors=0 checkov_failed=0 policy_failed=0 ...
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from mediasearch.dev.layout import ROOT
from mediasearch.requestlog import configure_logging

CHART = ROOT / "helm" / "mediasearch"
PROFILES: dict[str, Path | None] = {
    "gpu": None,  # values.yaml itself
    "cpu": CHART / "profiles" / "cpu.yaml",
    "minimal": CHART / "profiles" / "minimal.yaml",
}
KUBERNETES_VERSION = "1.30.0"
# Values a user must give (the chart has no defaults for them: secrets, buckets, the queue).
EXAMPLE_VALUES: dict[str, Any] = {
    "database": {"existingSecret": "mediasearch-database"},
    "gateway": {"tokenSecret": {"existingSecret": "mediasearch-gateway"}},
    "tests": {"apiKey": {"existingSecret": "mediasearch-test-key"}},
    "model": {"repository": "s3://example-models/clip-vit-b-32"},
    "index": {"segmentStoreUrl": "s3://example-index/segments"},
    "indexer": {"queueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/mediasearch-events"},
}
# The one-off Jobs no profile enables (an operator turns them on for an upgrade or two), checked
# as the GPU profile's release with both on ("gpu+jobs").
ONE_OFF_JOBS: dict[str, Any] = {
    "backfill": {"enabled": True, "url": "s3://example-images/photos"},
    "reindex": {"enabled": True, "modelName": "clip2"},
}
# Custom resources of optional integrations: no schema ships with kubernetes-validate for them.
CRD_KINDS = frozenset({"ServiceMonitor", "ScaledObject", "TriggerAuthentication"})
WORKLOADS = frozenset({"Deployment", "StatefulSet", "Job", "Pod"})
LONG_RUNNING = frozenset({"Deployment", "StatefulSet"})
# checkov's Kubernetes checks this chart does not meet on purpose, each with the reason.
CHECKOV_SKIPS = {
    "CKV_K8S_43": "images by tag: the chart pins tags; a digest is the installer's choice",
    "CKV_K8S_15": "pull policy IfNotPresent with pinned tags (Always needs the registry at every pod start)",
    "CKV_K8S_35": "secrets as environment variables (secretKeyRef): settings are read from the environment",
    "CKV_K8S_40": "Triton runs as its image's own user (triton-server, uid 1000); ours run as 10001",
}


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            deep_merge(out[key], value)
            if isinstance(value, Mapping) and isinstance(out.get(key), dict)
            else value
        )
    return out


def profile_values(profile: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What ``helm install -f profiles/<profile>.yaml`` passes, plus the user's required values."""
    path = PROFILES[profile]
    values = yaml.safe_load(path.read_text()) if path is not None else {}
    return deep_merge(deep_merge(values or {}, EXAMPLE_VALUES), extra or {})


def _chart() -> Any:
    import helm_python

    return helm_python.Chart.load(str(CHART))


def render(profile: str, extra: Mapping[str, Any] | None = None, *, name: str = "ms") -> list[dict[str, Any]]:
    """Every document the profile renders (templates, hooks and the test pod), parsed."""
    rendered = _chart().render(profile_values(profile, extra), name=name, namespace="search", is_install=True)
    return [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith((".yaml", ".yml"))
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def schema_errors(values: Mapping[str, Any]) -> list[str]:
    """``values.schema.json``'s complaints about ``values`` (merged over the chart's defaults)."""
    import helm_python

    try:
        _chart().validate_schema(dict(values))
    except helm_python.HelmValuesError as exc:
        return [str(exc)]
    return []


def validation_errors(docs: list[dict[str, Any]], version: str = KUBERNETES_VERSION) -> list[str]:
    """kubernetes-validate --strict over every built-in kind (custom resources are skipped)."""
    import kubernetes_validate

    errors = []
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    return errors


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """``(workload, pod spec)`` of every document that runs pods."""
    for doc in docs:
        if doc["kind"] == "Pod":
            yield doc, doc["spec"]
        elif doc["kind"] in WORKLOADS:
            yield doc, doc["spec"]["template"]["spec"]


def policy_problems(docs: list[dict[str, Any]]) -> list[str]:
    """The chart's own rules: GPUs only on Triton; requests and limits everywhere; probes on every
    long-running container; non-root, read-only, no escalation, no capabilities, seccomp; secrets
    only by reference; no service-link variables; no pre-install hook waiting for the release's
    own ServiceAccount."""
    problems = []
    if any(doc["kind"] == "Secret" for doc in docs):
        problems.append("the chart renders a Secret: credentials must come from existing Secrets")
    for doc, pod in pod_specs(docs):
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        pod_security = pod.get("securityContext", {})
        if pod.get("enableServiceLinks", True):
            problems.append(
                f"{where}: service links on (<SERVICE>_PORT variables read as MEDIASEARCH_* settings)"
            )
        hook = doc["metadata"].get("annotations", {}).get("helm.sh/hook", "")
        if "pre-install" in hook and "serviceAccountName" in pod:
            problems.append(
                f"{where}: a pre-install hook names a ServiceAccount the install has not created yet"
            )
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            name = f"{where}/{container['name']}"
            problems += _container_problems(name, container, pod_security)
            if doc["kind"] in LONG_RUNNING and container in pod["containers"]:
                problems += [
                    f"{name}: no {p}" for p in ("livenessProbe", "readinessProbe") if p not in container
                ]
            gpus = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
            if gpus and doc["metadata"]["labels"].get("app.kubernetes.io/component") != "triton":
                problems.append(f"{name}: asks for a GPU; only Triton should")
    return problems


def _container_problems(name: str, container: dict[str, Any], pod: dict[str, Any]) -> list[str]:
    problems = []
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(kind, {}):
                problems.append(f"{name}: no {resource} {kind[:-1]}")
    security = {**pod, **container.get("securityContext", {})}
    expected = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}
    problems += [
        f"{name}: {key} is not {value}" for key, value in expected.items() if security.get(key) != value
    ]
    if "ALL" not in security.get("capabilities", {}).get("drop", []):
        problems.append(f"{name}: capabilities are not all dropped")
    if security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{name}: seccomp profile is not RuntimeDefault")
    for env in container.get("env", []):
        if (
            any(word in env["name"] for word in ("SECRET", "PASSWORD", "TOKEN", "DATABASE_URL"))
            and "value" in env
        ):
            problems.append(f"{name}: {env['name']} is written into the manifest; use a secretKeyRef")
    return problems


CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"


def checkov_failures(docs: list[dict[str, Any]]) -> list[str]:
    """The checks checkov fails on the rendered documents, skips above excepted."""
    with tempfile.TemporaryDirectory(prefix="mediasearch-chart-") as tmp:
        (Path(tmp) / "rendered.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        done = subprocess.run(
            [str(CHECKOV), "-d", tmp, "--framework", "kubernetes", "--quiet", "--compact", "-o", "json",
             "--skip-check", ",".join(CHECKOV_SKIPS)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise RuntimeError(f"checkov failed to run: {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    return [
        f"{check['check_id']} {check['resource']}: {check['check_name']}"
        for r in reports
        for check in r.get("results", {}).get("failed_checks", [])
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-checkov", action="store_true", help="skip checkov (not installed)")
    parser.add_argument("--wiring", action="store_true", help="also run the wiring test (a few minutes)")
    args = parser.parse_args(argv)
    configure_logging(logging.INFO)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    documents = schema = validate = policy = failed = 0
    checked: list[tuple[str, str, Mapping[str, Any] | None]] = [
        *((p, p, None) for p in PROFILES),
        ("gpu+jobs", "gpu", ONE_OFF_JOBS),
    ]
    for label, profile, extra in checked:
        docs = render(profile, extra)
        documents += len(docs)
        for kind, errors in (
            ("schema", schema_errors(profile_values(profile, extra))),
            ("validate", validation_errors(docs)),
            ("policy", policy_problems(docs)),
            ("checkov", [] if args.no_checkov else checkov_failures(docs)),
        ):
            for error in errors:
                sys.stdout.write(f"{label}: {kind}: {error}\n")
            schema += len(errors) if kind == "schema" else 0
            validate += len(errors) if kind == "validate" else 0
            policy += len(errors) if kind == "policy" else 0
            failed += len(errors) if kind == "checkov" else 0
    wiring, wiring_ok = "", True
    if args.wiring:
        from mediasearch.dev.chart_wiring import run_wiring

        started = time.monotonic()
        try:
            run_wiring()
        except Exception as exc:  # reported in the summary; the details were logged above
            sys.stdout.write(f"cpu: wiring: {type(exc).__name__}: {exc}\n")
            wiring_ok = False
        wiring = f" wiring_ok={int(wiring_ok)} wiring_s={time.monotonic() - started:.0f}"
    checkov = "n/a" if args.no_checkov else str(failed)
    sys.stdout.write(
        f"chart: profiles={len(PROFILES)} documents={documents} schema_errors={schema} "
        f"validate_errors={validate} checkov_failed={checkov} policy_failed={policy}{wiring}\n"
    )
    return 0 if wiring_ok and schema + validate + policy + failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
