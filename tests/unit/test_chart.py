"""The Helm chart, offline: every profile renders documents Kubernetes accepts, the schema refuses
bad values, the policies hold, and what the chart tells the code (commands, options, settings,
addresses) is what the code knows. The live wiring is tests/e2e/test_chart_wiring.py."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

import pytest

from mediasearch.cli import build_parser
from mediasearch.dev import chart
from mediasearch.settings import Settings, load_settings

PROFILES = list(chart.PROFILES)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{doc['kind']}/{doc['metadata']['name']}/{c['name']}", c)
        for doc, pod in chart.pod_specs(docs)
        for c in [*pod.get("initContainers", []), *pod["containers"]]
    ]


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_passes_the_schema_and_renders_documents_kubernetes_accepts(profile: str) -> None:
    assert chart.schema_errors(chart.profile_values(profile)) == []
    docs = chart.render(profile)
    assert chart.validation_errors(docs) == []
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "Job", "NetworkPolicy", "Pod"} <= kinds


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_meets_the_policies(profile: str) -> None:
    assert chart.policy_problems(chart.render(profile)) == []


def test_only_triton_asks_for_gpus_and_only_in_the_gpu_profile() -> None:
    for profile, gpus in (("gpu", 1), ("cpu", 0), ("minimal", 0)):
        asking = {
            name: c["resources"]["limits"].get("nvidia.com/gpu")
            for name, c in containers(chart.render(profile))
            if c["resources"]["limits"].get("nvidia.com/gpu")
        }
        assert asking == ({"Deployment/ms-mediasearch-triton/tritonserver": gpus} if gpus else {})


def test_the_policies_catch_a_container_without_probes_limits_or_a_read_only_root() -> None:
    docs = chart.render("minimal")
    gateway = by_kind(docs, "Deployment")["ms-mediasearch-gateway"]["spec"]["template"]["spec"]["containers"][
        0
    ]
    del gateway["readinessProbe"], gateway["resources"]["limits"]["memory"]
    gateway["securityContext"]["readOnlyRootFilesystem"] = False
    gateway["env"].append({"name": "MEDIASEARCH_GATEWAY_TOKEN_SECRET", "value": "hunter2"})
    problems = chart.policy_problems(docs)
    assert any("no readinessProbe" in p for p in problems)
    assert any("no memory limit" in p for p in problems)
    assert any("readOnlyRootFilesystem" in p for p in problems)
    assert any("TOKEN_SECRET is written into the manifest" in p for p in problems)


SCHEMA_RULES = [
    ({"database": {"existingSecret": ""}}, "database/existingSecret"),
    ({"gateway": {"tokenSecret": {"existingSecret": ""}}}, "tokenSecret/existingSecret"),
    ({"model": {"repository": "/local/path"}}, "model/repository"),
    ({"index": {"segmentStoreUrl": "file:///segments"}}, "index/segmentStoreUrl"),
    ({"index": {"shards": 0}}, "index/shards"),
    ({"index": {"encoding": "IVF"}}, "index/encoding"),
    ({"indexer": {"queueUrl": "mediasearch-events"}}, "indexer/queueUrl"),
    ({"triton": {"flavour": "cuda"}}, "triton/flavour"),
    ({"triton": {"flavour": "onnx-cpu", "gpus": 1}}, "triton/gpus"),
    ({"triton": {"flavour": "gpu", "gpus": 0}}, "triton/gpus"),
    ({"gateway": {"port": 70000}}, "gateway/port"),
    ({"shards": {"replicas": 0}}, "shards/replicas"),
    ({"compactor": {"every": 0}}, "compactor/every"),
    ({"backfill": {"enabled": True, "url": ""}}, "backfill/url"),
    ({"reindex": {"enabled": True, "modelName": ""}}, "reindex/modelName"),
    ({"reindex": {"enabled": True, "modelName": "CLIP 2"}}, "reindex/modelName"),
    ({"reindex": {"parts": 0}}, "reindex/parts"),
    ({"reindex": {"backoffLimit": -1}}, "reindex/backoffLimit"),
    ({"reindex": {"parralelism": 2}}, "parralelism"),
    ({"model": {"others": ["clip2", "clip2"]}}, "model/others"),
    ({"config": {"DATABASE_URL": "postgresql://u:p@db/x"}}, "DATABASE_URL"),
    ({"config": {"search_nprobe": "8"}}, "search_nprobe"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
    ({"containerSecurityContext": {"readOnlyRootFilesystem": False}}, "readOnlyRootFilesystem"),
    ({"gateway": {"resources": {"requests": {"cpu": "lots", "memory": "1Gi"}}}}, "cpu"),
    ({"gatway": {"replicas": 2}}, "gatway"),
    ({"config": {"SHARD_ADDRESSES": "[]"}}, "SHARD_ADDRESSES"),
    ({"config": {"SEARCH_NPROBE": 8}}, "SEARCH_NPROBE"),
    ({"compactor": {"maxVectors": 10}}, "compactor/maxVectors"),
    ({"triton": {"strategy": {"type": "Sometimes"}}}, "triton/strategy"),
]


@pytest.mark.parametrize(("change", "named"), SCHEMA_RULES, ids=[named for _, named in SCHEMA_RULES])
def test_the_schema_refuses_a_bad_value_and_names_it(change: dict[str, Any], named: str) -> None:
    errors = chart.schema_errors(chart.profile_values("gpu", change))
    assert errors and named in errors[0], errors


def test_shard_memory_follows_the_vectors_per_shard_arithmetic() -> None:
    docs = chart.render("gpu", {"shards": {"vectorsPerShard": 10_000_000, "bytesPerVector": 540}})
    shard = by_kind(docs, "StatefulSet")["ms-mediasearch-shard-0"]["spec"]["template"]["spec"]["containers"][
        0
    ]
    index_mi = 10_000_000 * 540 // 2**20
    request = index_mi * 5 // 4 + 512
    assert shard["resources"]["requests"]["memory"] == f"{request}Mi"
    merge_mi = 4_000_000 * 540 // 2**20  # the largest merged segment (compactor.maxVectors) loads beside
    assert shard["resources"]["limits"]["memory"] == f"{request + merge_mi}Mi"


def test_the_segment_cache_is_derived_from_the_vectors_per_shard_unless_given() -> None:
    def cache(**shards: Any) -> str:
        docs = chart.render("gpu", {"shards": shards})
        volumes = by_kind(docs, "StatefulSet")["ms-mediasearch-shard-0"]["spec"]["template"]["spec"][
            "volumes"
        ]
        return next(v["emptyDir"]["sizeLimit"] for v in volumes if v["name"] == "cache")

    derived = 10_000_000 * (540 + 8 + 2048) // 2**20 * 3 // 2
    assert cache(vectorsPerShard=10_000_000, bytesPerVector=540) == f"{derived}Mi"
    assert cache(vectorsPerShard=10_000_000, cacheSize="300Gi") == "300Gi"


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_mediasearch_container_runs_a_real_subcommand_with_real_options(profile: str) -> None:
    commands = _subcommands()
    docs = chart.render(profile, chart.ONE_OFF_JOBS)
    checked = 0
    for name, container in containers(docs):
        if container["image"].startswith("nvcr.io/"):
            continue
        args = [a.replace("$(JOB_COMPLETION_INDEX)", "0") for a in container["args"]]
        assert args[0] in commands, f"{name}: no subcommand {args[0]}"
        parsed = commands[args[0]].parse_args(args[1:])  # SystemExit on an unknown option
        assert parsed.func is not None
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("profile", PROFILES)
def test_every_setting_the_chart_gives_is_one_the_code_reads_and_accepts(
    profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = chart.render(profile, {"config": {"SEARCH_NPROBE": "8"}})
    config = by_kind(docs, "ConfigMap")["ms-mediasearch-config"]["data"]
    env = {e["name"] for _, c in containers(docs) for e in c.get("env", [])}
    given = {k for k in [*config, *env] if k.startswith("MEDIASEARCH_")}
    assert not {k for k in given if k.removeprefix("MEDIASEARCH_").lower() not in Settings.model_fields}
    for key, value in config.items():  # what a pod's environment holds
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.search_nprobe == 8 and settings.encoder == "triton"


def test_the_gateway_is_told_every_shard_replica_by_its_pod_dns_name_and_port() -> None:
    docs = chart.render("gpu", {"index": {"shards": 3}, "shards": {"replicas": 2, "port": 7100}})
    addresses = json.loads(
        by_kind(docs, "ConfigMap")["ms-mediasearch-config"]["data"]["MEDIASEARCH_SHARD_ADDRESSES"]
    )
    statefulsets = by_kind(docs, "StatefulSet")
    services = by_kind(docs, "Service")
    assert len(addresses) == 3
    for shard, entry in enumerate(addresses):
        sts = statefulsets[f"ms-mediasearch-shard-{shard}"]
        assert services[sts["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
        expected = [f"{sts['metadata']['name']}-{r}.{sts['spec']['serviceName']}:7100" for r in range(2)]
        assert entry.split("|") == expected
        port = sts["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
        assert port == 7100


def test_the_test_pod_searches_through_the_gateway_service() -> None:
    docs = chart.render("gpu")
    pod = by_kind(docs, "Pod")["ms-mediasearch-test-search"]
    address = pod["spec"]["containers"][0]["args"][
        pod["spec"]["containers"][0]["args"].index("--address") + 1
    ]
    service = by_kind(docs, "Service")["ms-mediasearch-gateway"]
    assert address == f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"


def _admits(policy: dict[str, Any], labels: dict[str, str], port: int) -> bool:
    """Whether a NetworkPolicy's ingress rules let a pod in this namespace with ``labels`` reach ``port``."""
    for rule in policy["spec"]["ingress"]:
        if port not in [p["port"] for p in rule.get("ports", [{"port": port}])]:
            continue
        peers = rule.get("from")
        if peers is None or any(
            all(labels.get(k) == v for k, v in peer.get("podSelector", {}).get("matchLabels", {}).items())
            and "namespaceSelector" not in peer
            and "ipBlock" not in peer
            for peer in peers
        ):
            return True
    return False


def test_only_the_gateway_and_the_indexer_reach_triton_and_gateway_from_keeps_the_test_pod_in() -> None:
    peer = {"podSelector": {"matchLabels": {"role": "frontend"}}}
    docs = chart.render("gpu", {"networkPolicy": {"gatewayFrom": [peer]}})
    policies = by_kind(docs, "NetworkPolicy")
    release = {"app.kubernetes.io/name": "mediasearch", "app.kubernetes.io/instance": "ms"}
    triton = policies["ms-mediasearch-triton"]
    for component, allowed in (("gateway", True), ("indexer", True), ("shard-0", False), ("test", False)):
        assert _admits(triton, {**release, "app.kubernetes.io/component": component}, 8001) is allowed
    gateway = policies["ms-mediasearch-gateway"]
    assert _admits(gateway, {"role": "frontend"}, 50051)
    assert _admits(gateway, {**release, "app.kubernetes.io/component": "test"}, 50051)
    assert not _admits(gateway, {"role": "someone-else"}, 50051)
    internal = policies["ms-mediasearch-internal"]
    assert not _admits(internal, {"role": "frontend"}, 7001)


def test_migrations_run_as_a_hook_before_install_and_upgrade() -> None:
    job = by_kind(chart.render("gpu"), "Job")["ms-mediasearch-migrate"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


@pytest.mark.skipif(
    not chart.CHECKOV.exists(), reason="checkov is installed by `make test` into .venv-checkov"
)
def test_checkov_finds_nothing_it_was_not_told_why() -> None:
    docs = [d for p in PROFILES for d in chart.render(p)] + chart.render("gpu", chart.ONE_OFF_JOBS)
    assert chart.checkov_failures(docs) == []


def test_without_a_gpu_triton_is_not_pinned_to_gpu_nodes() -> None:
    for profile, selector in (("gpu", {"nvidia.com/gpu.present": "true"}), ("cpu", None), ("minimal", None)):
        triton = by_kind(chart.render(profile), "Deployment")["ms-mediasearch-triton"]["spec"]["template"][
            "spec"
        ]
        assert triton.get("nodeSelector") == selector, profile


def test_the_policies_catch_service_links_and_a_hook_waiting_for_the_service_account() -> None:
    docs = chart.render("gpu")
    by_kind(docs, "Deployment")["ms-mediasearch-gateway"]["spec"]["template"]["spec"][
        "enableServiceLinks"
    ] = True
    by_kind(docs, "Job")["ms-mediasearch-migrate"]["spec"]["template"]["spec"]["serviceAccountName"] = "ms"
    problems = chart.policy_problems(docs)
    assert any("ms-mediasearch-gateway: service links on" in p for p in problems)
    assert any("ms-mediasearch-migrate: a pre-install hook names a ServiceAccount" in p for p in problems)


def test_every_optional_part_renders_documents_kubernetes_accepts() -> None:
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    docs = chart.render(
        "gpu",
        {
            "indexer": {"keda": {"enabled": True}},
            "serviceMonitor": {"enabled": True},
            "triton": {"autoscaling": {"enabled": True}},
            "backfill": {"enabled": True, "url": "s3://photos/2024/"},
            "networkPolicy": {"metricsFrom": [monitoring]},
            "aws": {"existingSecret": "mediasearch-aws", "sqsEndpointUrl": "https://sqs.internal:4566"},
        },
    )
    assert chart.validation_errors(docs) == [] and chart.policy_problems(docs) == []
    kinds = {d["kind"] for d in docs}
    assert {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "HorizontalPodAutoscaler"} <= kinds
    auth = by_kind(docs, "TriggerAuthentication")["ms-mediasearch-indexer"]["spec"]
    assert [r["parameter"] for r in auth["secretTargetRef"]] == ["awsAccessKeyID", "awsSecretAccessKey"]
    trigger = by_kind(docs, "ScaledObject")["ms-mediasearch-indexer"]["spec"]["triggers"][0]["metadata"]
    assert trigger["awsEndpoint"] == "https://sqs.internal:4566" and "identityOwner" not in trigger
    triton = by_kind(docs, "HorizontalPodAutoscaler")["ms-mediasearch-triton"]["spec"]
    assert "replicas" not in by_kind(docs, "Deployment")["ms-mediasearch-triton"]["spec"]
    assert triton["metrics"][0]["pods"]["metric"]["name"] == "mediasearch_triton_queue_time_us"
    metrics = by_kind(docs, "NetworkPolicy")["ms-mediasearch-metrics"]
    for port in (9108, 9109, 9110, 8002):
        assert any(port in [p["port"] for p in rule["ports"]] for rule in metrics["spec"]["ingress"])
    job = next(d for d in docs if d["kind"] == "Job" and "backfill" in d["metadata"]["name"])
    assert job["spec"]["completionMode"] == "Indexed"
    assert "$(JOB_COMPLETION_INDEX)/4" in " ".join(job["spec"]["template"]["spec"]["containers"][0]["args"])
    triton_policy = by_kind(docs, "NetworkPolicy")["ms-mediasearch-triton"]
    backfill = {"app.kubernetes.io/name": "mediasearch", "app.kubernetes.io/instance": "ms"}
    assert _admits(triton_policy, {**backfill, "app.kubernetes.io/component": "backfill"}, 8001)


def test_keda_uses_the_indexers_own_role_without_keys() -> None:
    docs = chart.render("gpu", {"indexer": {"keda": {"enabled": True}}})
    auth = by_kind(docs, "TriggerAuthentication")["ms-mediasearch-indexer"]["spec"]
    assert auth == {"podIdentity": {"provider": "aws", "identityOwner": "workload"}}


def test_triton_reads_an_s3_compatible_endpoint_with_its_scheme_and_port() -> None:
    def repository(endpoint: str) -> str:
        docs = chart.render("gpu", {"aws": {"s3EndpointUrl": endpoint}})
        args = by_kind(docs, "Deployment")["ms-mediasearch-triton"]["spec"]["template"]["spec"]["containers"][
            0
        ]
        return next(a for a in args["args"] if a.startswith("--model-repository="))

    assert repository("https://minio.example.com").endswith(
        "=s3://https://minio.example.com:443/example-models/clip-vit-b-32"
    )
    assert repository("http://10.0.0.5:9000").endswith(
        "=s3://http://10.0.0.5:9000/example-models/clip-vit-b-32"
    )


def test_a_shards_replicas_prefer_different_nodes_and_the_compactor_is_sized_by_its_largest_merge() -> None:
    docs = chart.render("gpu", {"compactor": {"maxVectors": 2_000_000}})
    shard = by_kind(docs, "StatefulSet")["ms-mediasearch-shard-1"]["spec"]["template"]["spec"]
    term = shard["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "shard-1"
    compactor = by_kind(docs, "Deployment")["ms-mediasearch-compactor"]["spec"]["template"]["spec"]
    request = 2_000_000 * (2 * 2048 + 540) // 2**20 + 1024
    assert compactor["containers"][0]["resources"]["requests"]["memory"] == f"{request}Mi"
    config = by_kind(docs, "ConfigMap")["ms-mediasearch-config"]["data"]
    assert config["MEDIASEARCH_COMPACT_MAX_VECTORS"] == "2000000"


def _gateway_container(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = by_kind(docs, "Deployment")["ms-mediasearch-gateway"]["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_the_gateway_requires_keys_says_its_presigning_and_helm_test_searches_with_a_key() -> None:
    docs = chart.render("gpu")
    config = by_kind(docs, "ConfigMap")["ms-mediasearch-config"]["data"]
    assert config["MEDIASEARCH_GATEWAY_AUTH"] == "required"
    assert config["MEDIASEARCH_GATEWAY_PRESIGN_URLS"] == "true"
    test_pod = next(d for d in docs if d["kind"] == "Pod")
    (env,) = test_pod["spec"]["containers"][0]["env"]
    assert (
        env["name"] == "MEDIASEARCH_API_KEY"
        and env["valueFrom"]["secretKeyRef"]["name"] == "mediasearch-test-key"
    )
    no_auth = chart.render("gpu", {"gateway": {"auth": "off"}, "tests": {"apiKey": {"existingSecret": ""}}})
    assert "env" not in next(d for d in no_auth if d["kind"] == "Pod")["spec"]["containers"][0]
    with pytest.raises(Exception, match=r"tests\.apiKey\.existingSecret is required"):  # helm's `required`
        chart.render("gpu", {"tests": {"apiKey": {"existingSecret": ""}}})


def test_gateway_tls_mounts_the_secret_probes_over_tcp_and_the_test_pod_trusts_its_ca() -> None:
    docs = chart.render("gpu", {"gateway": {"tls": {"existingSecret": "gw-tls", "clientCA": True}}})
    assert chart.validation_errors(docs) == [] and chart.policy_problems(docs) == []
    pod, gateway = _gateway_container(docs)
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    assert env["MEDIASEARCH_GATEWAY_TLS_CERT"] == "/etc/mediasearch/tls/tls.crt"
    assert env["MEDIASEARCH_GATEWAY_TLS_CLIENT_CA"] == "/etc/mediasearch/tls/ca.crt"
    assert {"name": "tls", "secret": {"secretName": "gw-tls"}} in pod["volumes"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "tcpSocket" in gateway[probe] and "grpc" not in gateway[probe]
    test_pod = next(d for d in docs if d["kind"] == "Pod")["spec"]
    assert test_pod["containers"][0]["args"][-2:] == ["--tls-ca", "/etc/mediasearch/tls/ca.crt"]
    plain = _gateway_container(chart.render("gpu"))[1]
    assert "grpc" in plain["readinessProbe"] and "MEDIASEARCH_GATEWAY_TLS_CERT" not in str(plain["env"])


def test_a_previous_token_key_is_read_from_the_same_secret() -> None:
    docs = chart.render("gpu", {"gateway": {"tokenSecret": {"existingSecret": "gw", "previousKey": "old"}}})
    env = {e["name"]: e for e in _gateway_container(docs)[1]["env"]}
    ref = env["MEDIASEARCH_GATEWAY_TOKEN_SECRET_PREVIOUS"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "gw", "key": "old"}


def test_the_gateways_worst_image_decodes_fit_its_memory_limit() -> None:
    from mediasearch.preprocess.image import DecodeLimits, max_decode_bytes

    docs = chart.render("gpu")
    gateway = _gateway_container(docs)[1]
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    limits = DecodeLimits(
        max_bytes=int(env["MEDIASEARCH_MAX_IMAGE_BYTES"]),
        max_pixels=int(env["MEDIASEARCH_MAX_IMAGE_PIXELS"]),
        max_aspect=Settings.defaults().max_image_aspect,
    )
    worst = Settings.defaults().image_decode_threads * max_decode_bytes(limits)
    limit = gateway["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and worst < 0.75 * int(limit[:-2]) * 2**30, (worst / 2**20, limit)


@pytest.mark.parametrize(
    ("kind", "name"), [("Deployment", "ms-mediasearch-indexer"), ("Job", "ms-mediasearch-reindex-1")]
)
def test_the_indexers_worst_image_decodes_and_downloads_fit_its_memory_limit(kind: str, name: str) -> None:
    """The indexer's, and the reindex Job's (the indexer's pipeline too)."""
    from mediasearch.preprocess.image import DecodeLimits, max_decode_bytes

    docs = chart.render("gpu", chart.ONE_OFF_JOBS)
    pod = by_kind(docs, kind)[name]["spec"]["template"]["spec"]
    indexer = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in indexer["env"]}
    workers = int(env["MEDIASEARCH_IMAGE_DECODE_WORKERS"])
    defaults = Settings.defaults()  # the indexer keeps the settings' image limits
    limits = DecodeLimits(defaults.max_image_bytes, defaults.max_image_pixels, defaults.max_image_aspect)
    cpus = indexer["resources"]["limits"]["cpu"]
    assert workers == int(cpus)  # one decode worker per CPU the pod may use
    downloads = defaults.indexer_fetch_concurrency * defaults.max_image_bytes
    worst = workers * max_decode_bytes(limits) + downloads + 2**30  # + the processes themselves
    limit = indexer["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and worst < int(limit[:-2]) * 2**30, (worst / 2**20, limit)


REINDEX = {"reindex": {"enabled": True, "modelName": "clip2", "parts": 6, "parallelism": 3}}


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    """``$(VAR)`` in a container's arguments, as the kubelet expands them from its environment."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


def _pulled_models(pod: dict[str, Any], config: dict[str, str]) -> list[str]:
    """The model names a pod's pull-model init containers copy (parsed as the CLI parses them)."""
    pull = _subcommands()["pull-model"]
    return [
        pull.parse_args(c["args"][1:]).name or config["MEDIASEARCH_MODEL_NAME"]
        for c in pod.get("initContainers", [])
        if c["args"][0] == "pull-model"
    ]


def test_the_reindex_job_runs_every_part_with_the_new_model_as_the_indexer_runs() -> None:
    from mediasearch.indexer.reindex import Part

    docs = chart.render("gpu", REINDEX)
    config = by_kind(docs, "ConfigMap")["ms-mediasearch-config"]["data"]
    job = by_kind(docs, "Job")["ms-mediasearch-reindex-1"]
    spec, pod = job["spec"], _pod(job)
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 6, 3)
    assert spec["backoffLimitPerIndex"] == 3 and spec["ttlSecondsAfterFinished"] > 0
    assert pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    parts = set()
    for index in range(spec["completions"]):  # what each pod's arguments become
        args = _expand(container["args"], {**config, "JOB_COMPLETION_INDEX": str(index)})
        parsed = _subcommands()[args[0]].parse_args(args[1:])
        assert (parsed.model_name, parsed.no_progress) == ("clip2", True)
        repository = str(parsed.model_repository)  # the folder the init containers fill
        assert repository == config["MEDIASEARCH_MODEL_REPOSITORY"] and repository in mounts
        parts.add(Part.parse(parsed.part))
    assert parts == {Part(i, 6) for i in range(6)}  # every id mod 6 once
    assert "clip2" in _pulled_models(pod, config)  # its manifest and tokenizer where it reads them

    indexer = _pod(by_kind(docs, "Deployment")["ms-mediasearch-indexer"])["containers"][0]
    assert container["envFrom"] == indexer["envFrom"]
    assert [e["name"] for e in container["env"]] == [e["name"] for e in indexer["env"]]
    for key in ("securityContext", "volumeMounts"):
        assert container[key] == indexer[key], key
    assert pod["volumes"] == _pod(by_kind(docs, "Deployment")["ms-mediasearch-indexer"])["volumes"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert (
        labels["app.kubernetes.io/component"]
        == job["metadata"]["labels"]["app.kubernetes.io/component"]
        == "reindex"
    )
    assert _admits(by_kind(docs, "NetworkPolicy")["ms-mediasearch-triton"], labels, 8001)
    assert chart.validation_errors(docs) == [] and chart.policy_problems(docs) == []


def test_every_encoding_pod_holds_the_files_of_every_model_a_switch_or_rollback_may_make_live() -> None:
    docs = chart.render("gpu", {**REINDEX, "model": {"others": ["clip1"]}})
    config = by_kind(docs, "ConfigMap")["ms-mediasearch-config"]["data"]
    for name in ("ms-mediasearch-gateway", "ms-mediasearch-indexer"):
        assert _pulled_models(_pod(by_kind(docs, "Deployment")[name]), config) == ["clip", "clip1", "clip2"]
    # after the switch: the Job off, the new model kept in model.others
    docs = chart.render(
        "gpu", {"reindex": {"enabled": False, "modelName": "clip2"}, "model": {"others": ["clip2"]}}
    )
    gateway = _pod(by_kind(docs, "Deployment")["ms-mediasearch-gateway"])
    assert _pulled_models(gateway, config) == ["clip", "clip2"]


def test_the_reindex_job_is_not_rendered_unless_enabled() -> None:
    docs = chart.render("gpu", {"reindex": {"modelName": "clip2"}})
    assert not [d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "reindex"]
    gateway = _pod(by_kind(docs, "Deployment")["ms-mediasearch-gateway"])
    assert [c["name"] for c in gateway["initContainers"]] == ["pull-model"]
