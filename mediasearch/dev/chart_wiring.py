"""The chart's wiring test: what ``helm/mediasearch`` renders, run as local processes.

A chart whose command, port, setting name or probe disagrees with the code fails here, without a
cluster. :func:`run_wiring` renders the CPU profile and then, as Kubernetes would:

1. runs the migration hook Job's container;
2. starts every workload's containers (init containers first, in order) as local processes: the
   container's ``args`` after ``mediasearch`` (the image's entrypoint), its environment from the
   rendered ConfigMap, ``env`` entries and the test's Secrets, its volumes as folders. Each Service
   (and each StatefulSet pod's DNS name) gets its own loopback address (127.0.0.x), written over
   the names in the environment; a setting that binds ``0.0.0.0`` binds the workload's address,
   so shard servers of every shard can keep the chart's one port;
3. stands in for the cluster's outside systems: PostgreSQL (a throwaway database), moto's S3 + SQS
   (the buckets and the queue, the model repository uploaded as a user would) and, for Triton's
   Deployment (NVIDIA's image), a local Triton over the same model on the Service's address and
   ports;
4. checks that every probe the chart declares answers (gRPC health, HTTP paths, TCP ports);
5. puts an image into the bucket and finds it with a search through the gateway's Service, then
   runs the ``helm test`` pod's command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mediasearch.dev import chart, emulated_aws, postgres
from mediasearch.dev.processes import Child, grpc_serving, http_status, mediasearch_command, tcp_open
from mediasearch.dev.triton import LocalTriton, TritonOptions
from mediasearch.errors import Unavailable

log = logging.getLogger(__name__)
SECRETS_DATABASE = "mediasearch-database"
SECRETS_TOKEN = "mediasearch-gateway"
SECRETS_TEST_KEY = "mediasearch-test-key"
_VAR = re.compile(r"\$\(([A-Z_][A-Z0-9_]*)\)")


@dataclass(frozen=True)
class Runtime:
    """Where the rendered containers' commands run: this checkout's interpreter (``root`` None), or
    a container image's filesystem mounted at ``root``, entered with ``chroot`` as the image's
    non-root user (``make image-test``; the host's network, so loopback is shared)."""

    root: Path | None = None
    user: tuple[int, int] = (10001, 10001)
    entrypoint: str = "/opt/mediasearch/bin/mediasearch"

    def argv(self, args: list[str]) -> list[str]:
        if self.root is None:
            return mediasearch_command(*args)
        uid, gid = self.user
        return ["chroot", f"--userspec={uid}:{gid}", str(self.root), self.entrypoint, *args]

    def pods_folder(self, work: Path) -> Path:
        """Where the pods' volumes live on this machine (inside the image's filesystem for an image)."""
        return work / "pods" if self.root is None else self.root / "tmp" / "wiring-pods"

    def visible(self, folder: Path) -> str:
        """``folder`` as the process sees it."""
        return str(folder) if self.root is None else "/" + folder.relative_to(self.root).as_posix()

    def make_folder(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if self.root is not None:
            os.chown(folder, *self.user)


@dataclass
class Pod:
    """One rendered pod, to run locally."""

    name: str  # the pod's name (a StatefulSet's <name>-<ordinal>)
    spec: dict[str, Any]
    address: str  # its loopback address
    folder: Path
    children: list[Child] = field(default_factory=list)

    def mounts(self, container: dict[str, Any]) -> dict[str, Path]:
        """mountPath -> the local folder of its volume (shared by the pod's containers)."""
        return {m["mountPath"]: self.folder / m["name"] for m in container.get("volumeMounts", [])}


class Wiring:
    """The rendered release, running on loopback; :meth:`start` then :meth:`check_search`."""

    def __init__(
        self, work: Path, repository: Path, database_url: str, endpoint: str, runtime: Runtime | None = None
    ) -> None:
        self.runtime = runtime or Runtime()
        self.work, self.repository, self.database_url, self.endpoint = (
            work,
            repository,
            database_url,
            endpoint,
        )
        self.bucket = emulated_aws.NotifyingBucket.create(
            endpoint, "wiring-images", queue="wiring-events", also=("wiring-segments", "wiring-models")
        )
        for path in sorted(repository.rglob("*")):  # the model repository, as `aws s3 sync` uploads it
            if path.is_file():
                key = f"repo/{path.relative_to(repository).as_posix()}"
                self.bucket.s3.upload_file(str(path), "wiring-models", key)
        values = {
            "aws": {"s3EndpointUrl": endpoint, "sqsEndpointUrl": endpoint},
            "model": {"repository": "s3://wiring-models/repo"},
            "index": {"segmentStoreUrl": "s3://wiring-segments/index", "shards": 2},
            "indexer": {"queueUrl": self.bucket.queue_url, "replicas": 1},
            "shards": {"replicas": 1, "workers": 2},
            "compactor": {"every": 5},
        }
        # Released as "mediasearch": its Services are mediasearch-*, so Kubernetes' service-link
        # variables would read as MEDIASEARCH_* settings unless the pods turn them off.
        self.docs = chart.render("cpu", values, name="mediasearch")
        self.secrets = {
            SECRETS_DATABASE: {"url": database_url},
            SECRETS_TOKEN: {"token-secret": "wiring-test-token-secret"},
        }
        self.addresses: dict[str, str] = {}  # DNS name -> 127.0.0.x
        self.api_key = ""  # made after the migration hook
        self.triton: LocalTriton | None = None
        self.pods: list[Pod] = []

    # -- names and addresses ---------------------------------------------------------------
    def _address(self, name: str) -> str:
        if name not in self.addresses:
            self.addresses[name] = f"127.0.0.{10 + len(self.addresses)}"
        return self.addresses[name]

    def _kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def _planned_pods(self) -> list[tuple[str, dict[str, Any]]]:
        """(pod name, pod template) for every pod the release keeps running: a Deployment's one
        pod (``<name>-0``; one replica is enough to check its wiring) and each StatefulSet pod."""
        pods = []
        for doc in self._kind("Deployment"):
            pods.append((f"{doc['metadata']['name']}-0", doc["spec"]["template"]))
        for doc in self._kind("StatefulSet"):
            for ordinal in range(doc["spec"]["replicas"]):
                pods.append((f"{doc['metadata']['name']}-{ordinal}", doc["spec"]["template"]))
        return pods

    def _assign_addresses(self) -> None:
        """A loopback address per pod; a Service's name resolves to the first pod it selects (its
        ports must reach a container port), a StatefulSet pod's ``<pod>.<service>`` to the pod."""
        pods = self._planned_pods()
        for name, _ in pods:
            self._address(name)
        for service in self._kind("Service"):
            name, selector = service["metadata"]["name"], service["spec"]["selector"]
            selected = [
                (pod, template)
                for pod, template in pods
                if all(template["metadata"]["labels"].get(k) == v for k, v in selector.items())
            ]
            if not selected:
                raise AssertionError(f"Service {name} selects no pod ({selector})")
            pod, template = selected[0]
            ports = {
                key: port["containerPort"]
                for container in template["spec"]["containers"]
                for port in container.get("ports", [])
                for key in (port.get("name"), port["containerPort"])
            }
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                if ports.get(target) != port["port"]:
                    raise AssertionError(
                        f"Service {name} port {port['port']} -> {target}: no such container port in {pod}"
                        " (or a different number, which this test cannot map onto loopback)"
                    )
            self.addresses[name] = self.addresses[pod]
        for sts in self._kind("StatefulSet"):
            for ordinal in range(sts["spec"]["replicas"]):
                pod = f"{sts['metadata']['name']}-{ordinal}"
                self.addresses[f"{pod}.{sts['spec']['serviceName']}"] = self.addresses[pod]

    def _rewrite(self, text: str, pod: Pod, mounts: dict[str, str]) -> str:
        for name in sorted(self.addresses, key=len, reverse=True):
            text = re.sub(rf"(?<![\w.-]){re.escape(name)}(?=[:/\"|]|$)", self.addresses[name], text)
        if text == "0.0.0.0":
            return pod.address
        for mount, folder in mounts.items():
            if text == mount or text.startswith(mount + "/"):
                return folder + text[len(mount) :]
        return text

    def _service_links(self) -> dict[str, str]:
        """The variables Kubernetes gives a pod for every Service of its namespace with a cluster
        address, unless the pod says ``enableServiceLinks: false`` (<NAME>_SERVICE_HOST, <NAME>_PORT...)."""
        env = {}
        for service in self._kind("Service"):
            if service["spec"].get("clusterIP") == "None":
                continue
            name = service["metadata"]["name"].upper().replace("-", "_")
            address, ports = self.addresses[service["metadata"]["name"]], service["spec"]["ports"]
            env[f"{name}_SERVICE_HOST"] = address
            env[f"{name}_SERVICE_PORT"] = str(ports[0]["port"])
            env[f"{name}_PORT"] = f"tcp://{address}:{ports[0]['port']}"
            for port in ports:
                prefix = f"{name}_PORT_{port['port']}_TCP"
                if "name" in port:
                    env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
                env |= {prefix: f"tcp://{address}:{port['port']}", f"{prefix}_PROTO": "tcp",
                        f"{prefix}_PORT": str(port["port"]), f"{prefix}_ADDR": address}  # fmt: skip
        return env

    # -- processes ---------------------------------------------------------------------------
    def _environment(self, pod: Pod, container: dict[str, Any]) -> dict[str, str]:
        configmaps = {c["metadata"]["name"]: c["data"] for c in self._kind("ConfigMap")}
        env: dict[str, str] = dict(emulated_aws.ENV)  # the ServiceAccount's role, stood in for
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(configmaps[source["configMapRef"]["name"]])
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            else:
                ref = item["valueFrom"]["secretKeyRef"]
                env[item["name"]] = self.secrets[ref["name"]][ref["key"]]
        if pod.spec.get("enableServiceLinks", True):
            env.update(self._service_links())
        mounts = self._mounts(pod, container)
        env = {k: self._rewrite(v, pod, mounts) for k, v in env.items()}
        env["TMPDIR"] = mounts.get("/tmp", self.runtime.visible(pod.folder / "tmp"))
        env["HOME"] = env["TMPDIR"]
        return env

    def _argv(self, pod: Pod, container: dict[str, Any], env: dict[str, str]) -> list[str]:
        args = [_VAR.sub(lambda m: env.get(m.group(1), m.group(0)), a) for a in container["args"]]
        return self.runtime.argv([self._rewrite(a, pod, self._mounts(pod, container)) for a in args])

    def _mounts(self, pod: Pod, container: dict[str, Any]) -> dict[str, str]:
        """mountPath -> its volume's folder, as the process sees it."""
        return {mount: self.runtime.visible(folder) for mount, folder in pod.mounts(container).items()}

    def _run(self, pod: Pod, container: dict[str, Any], *, once: bool) -> Child:
        for folder in [pod.folder / "tmp", *pod.mounts(container).values()]:
            self.runtime.make_folder(folder)
        env = self._environment(pod, container)
        child = Child(
            f"{pod.name}/{container['name']}",
            self._argv(pod, container, env),
            env=env,
            log_path=self.work / "logs" / f"{pod.name}-{container['name']}.log",
        ).start()
        if once:
            status = child.wait(timeout_s=300)
            if status != 0:
                raise Unavailable(f"{child.name} exited with {status}:\n{child.log_tail()}")
        else:
            pod.children.append(child)
        return child

    def _start_pod(self, name: str, spec: dict[str, Any]) -> Pod:
        pod = Pod(name, spec, self._address(name), self.runtime.pods_folder(self.work) / name)
        for container in spec.get("initContainers", []):
            self._run(pod, container, once=True)
        for container in spec["containers"]:
            self._run(pod, container, once=False)
        self.pods.append(pod)
        log.info("pod %s at %s: %s", name, pod.address, ", ".join(c["name"] for c in spec["containers"]))
        return pod

    def _start_triton(self, deployment: dict[str, Any]) -> None:
        """NVIDIA's image cannot run here: a local Triton over the same model, on the Service's
        address and the container's ports, stands in for it."""
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        address = self.addresses[f"{deployment['metadata']['name']}-0"]
        options = TritonOptions(
            self.repository, host=address, http_port=ports["http"], grpc_port=ports["grpc"],
            metrics_port=ports["metrics"], ort_threads=1, log_file=self.work / "logs" / "triton.log",
        )  # fmt: skip
        self.triton = LocalTriton(options).start()
        self._wait_probes(address, container, "triton")

    def _create_api_key(self) -> None:
        """What docs/deploy.md has the operator do after the first install: a search key, kept in the
        Secret that ``helm test`` reads (the wiring test searches with it too)."""
        from mediasearch.metadata.api_keys import create_key
        from mediasearch.metadata.db import make_engine, session_factory

        engine = make_engine(self.secrets[SECRETS_DATABASE]["url"])
        try:
            with session_factory(engine).begin() as session:
                self.api_key = create_key(session, "helm-test", ["search"])
        finally:
            engine.dispose()
        self.secrets[SECRETS_TEST_KEY] = {"api-key": self.api_key}

    # -- the release ---------------------------------------------------------------------------
    def start(self) -> None:
        self._assign_addresses()
        for job in self._kind("Job"):  # the pre-install hook
            if "pre-install" in job["metadata"].get("annotations", {}).get("helm.sh/hook", ""):
                self._start_pod_once(job)
        self._create_api_key()
        for deployment in self._kind("Deployment"):
            if deployment["spec"]["template"]["spec"]["containers"][0]["image"].startswith("nvcr.io/"):
                self._start_triton(deployment)
        for sts in self._kind("StatefulSet"):
            for ordinal in range(sts["spec"]["replicas"]):
                self._start_pod(f"{sts['metadata']['name']}-{ordinal}", sts["spec"]["template"]["spec"])
        for deployment in self._kind("Deployment"):
            spec = deployment["spec"]["template"]["spec"]
            if not spec["containers"][0]["image"].startswith("nvcr.io/"):
                self._start_pod(f"{deployment['metadata']['name']}-0", spec)
        for pod in self.pods:
            for container in pod.spec["containers"]:
                self._wait_probes(pod.address, container, pod.name, pod)
        self._check_services()
        self._check_runtime()
        log.info(
            "every probe and Service port answers (%d pods, %d Services)",
            len(self.pods),
            len(self._kind("Service")),
        )

    def _check_runtime(self) -> None:
        """With an image's runtime: each process's root is the image's filesystem, its user the image's."""
        if self.runtime.root is None:
            return
        for pod in self.pods:
            for child in pod.children:
                proc = Path(f"/proc/{child.pid}")
                root, uid = os.readlink(proc / "root"), proc.stat().st_uid
                if (root, uid) != (str(self.runtime.root), self.runtime.user[0]):
                    raise AssertionError(
                        f"{child.name} runs in {root} as uid {uid}, not in the image as its user"
                    )

    def _check_services(self) -> None:
        """Every Service port accepts connections at the Service's name; a port named ``metrics``
        (what the ServiceMonitor scrapes) serves ``/metrics``."""
        for service in self._kind("Service"):
            address = self.addresses[service["metadata"]["name"]]
            for port in service["spec"]["ports"]:
                what = f"Service {service['metadata']['name']} port {port['port']}"
                if not tcp_open(address, port["port"]):
                    raise Unavailable(f"{what}: nothing listens at {address}")
                metrics = f"http://{address}:{port['port']}/metrics"
                if port.get("name") == "metrics" and http_status(metrics) != 200:
                    raise Unavailable(f"{what}: {metrics} does not answer 200")

    def _start_pod_once(self, doc: dict[str, Any]) -> None:
        """A Job's pod, or a bare Pod, run to completion (it must exit 0)."""
        spec = doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]
        name = doc["metadata"]["name"]
        pod = Pod(name, spec, "127.0.0.9", self.runtime.pods_folder(self.work) / name)
        for container in [*pod.spec.get("initContainers", []), *pod.spec["containers"]]:
            self._run(pod, container, once=True)

    def _wait_probes(
        self, address: str, container: dict[str, Any], what: str, pod: Pod | None = None
    ) -> None:
        """Every probe the container declares, until it answers (the startup probe's budget)."""
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container.get(kind)
            if probe is None:
                continue
            check = _probe_check(probe, address, ports)
            deadline = time.monotonic() + 180
            while not check():
                for child in pod.children if pod else []:
                    if not child.running():
                        raise Unavailable(f"{child.name} exited:\n{child.log_tail()}")
                if time.monotonic() > deadline:
                    raise Unavailable(f"{what}: {kind} {probe} does not answer at {address}")
                time.sleep(0.2)

    def check_search(self, image: bytes, caption: str) -> None:
        """An image put into the bucket is found through the gateway's Service, and the chart's
        ``helm test`` pod passes."""
        from mediasearch.client import SearchClient

        gateway = next(s for s in self._kind("Service") if s["metadata"]["name"].endswith("-gateway"))
        port = gateway["spec"]["ports"][0]["port"]
        self.bucket.put("photos/wiring.jpg", image, "image/jpeg")
        address = f"{self.addresses[gateway['metadata']['name']]}:{port}"
        with SearchClient(address, timeout_s=10, api_key=self.api_key) as client:
            client.wait_ready()
            deadline = time.monotonic() + 120
            while not any(r.key == "photos/wiring.jpg" for r in client.search_text(caption, top_k=5).results):
                if time.monotonic() > deadline:
                    raise Unavailable("the image put into the bucket was never found through the gateway")
                time.sleep(0.5)
        log.info("found %s through the gateway's Service; running the helm test pod", "photos/wiring.jpg")
        test_pod = next(
            p for p in self._kind("Pod") if p["metadata"]["annotations"].get("helm.sh/hook") == "test"
        )
        self._start_pod_once(test_pod)

    def stop(self) -> None:
        for pod in reversed(self.pods):
            for child in reversed(pod.children):
                child.stop()
        if self.triton is not None:
            self.triton.stop()


def _probe_check(probe: dict[str, Any], address: str, ports: dict[str, int]) -> Any:
    def port_of(value: int | str) -> int:
        return ports[value] if isinstance(value, str) else int(value)

    if "grpc" in probe:
        return lambda: grpc_serving(f"{address}:{port_of(probe['grpc']['port'])}")
    if "httpGet" in probe:
        url = f"http://{address}:{port_of(probe['httpGet']['port'])}{probe['httpGet']['path']}"
        return lambda: http_status(url) == 200
    if "tcpSocket" in probe:
        return lambda: tcp_open(address, port_of(probe["tcpSocket"]["port"]))
    raise AssertionError(f"a probe the wiring test does not know: {probe}")


@contextlib.contextmanager
def wiring(
    repository: Path, database_url: str, endpoint: str, work: Path, runtime: Runtime | None = None
) -> Iterator[Wiring]:
    """The CPU profile running on loopback over the given database and emulator."""
    release = Wiring(work, repository, database_url, endpoint, runtime)
    try:
        release.start()
        yield release
    finally:
        release.stop()


def run_wiring(runtime: Runtime | None = None) -> None:
    """``make chart``'s wiring step (and ``make image-test``'s, with the image's runtime): the whole
    test over a throwaway database, moto and the micro CLIP; raises when any part of it fails."""
    from mediasearch.export import export_model
    from mediasearch.export.micro import MODEL_DIR
    from mediasearch.export.micro.scenes import read_gallery, write_gallery

    with tempfile.TemporaryDirectory(prefix="mediasearch-wiring-") as tmp:
        work = Path(tmp)
        export_model(str(MODEL_DIR), work / "repo", "clip")
        write_gallery(work / "gallery", 1, seed=3)
        item = read_gallery(work / "gallery")[0]
        with (
            postgres.throwaway_database() as url,
            emulated_aws.moto_server() as endpoint,
            wiring(work / "repo", url, endpoint, work, runtime) as release,
        ):
            release.check_search(item.image.read_bytes(), item.caption)
