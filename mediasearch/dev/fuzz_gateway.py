"""Property-based fuzzing (hypothesis) of a live search gateway: every request message of
``proto/mediasearch/v1/search.proto``, and raw bytes sent to each method, must get a defined status.

The gateway is ``mediasearch serve`` in embedded mode (SQLite, in-process shards, the committed
micro CLIP) over a few indexed scenes, on a free loopback port, with a known page-token key
(:data:`~mediasearch.dev.fuzz_targets.SECRET`) so forged tokens can be signed for the very request
they come with: the paged path then runs on whatever a forger puts in a token.

Every call goes through a generic client (``request_serializer=None``): the bytes sent are exactly
the serialised message, or garbage. A call must end with one of :data:`DEFINED` within
:data:`SLOW_S`; an OK answer must parse. Afterwards the gateway must still run, its log must hold no
traceback, and its peak memory must stay under :data:`RSS_LIMIT_MB`.
``tests/integration/test_gateway_fuzz.py`` runs a bounded number of examples; ``make fuzz`` runs
:func:`fuzz_live_gateway` for its time budget.
"""

from __future__ import annotations

import collections
import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mediasearch._proto.mediasearch.v1 import search_pb2
from mediasearch.dev.fuzz_requests import Call, request_fingerprint, seed_images, strategies
from mediasearch.dev.fuzz_targets import SECRET
from mediasearch.dev.processes import Child, start_gateway
from mediasearch.gateway.paging import decode_token

SERVICE = "mediasearch.v1.SearchService"
RESPONSES: dict[str, Any] = {
    "SearchText": search_pb2.SearchResponse,
    "SearchImage": search_pb2.SearchResponse,
    "GetImage": search_pb2.ImageResult,
    "Stats": search_pb2.StatsResponse,
}
SC = grpc.StatusCode
DEFINED = frozenset(
    {
        SC.OK, SC.INVALID_ARGUMENT, SC.NOT_FOUND, SC.UNAUTHENTICATED, SC.PERMISSION_DENIED,
        SC.RESOURCE_EXHAUSTED, SC.DEADLINE_EXCEEDED,
    }
)  # fmt: skip
SCENES = 24
MAX_TOP_K = 100  # the gateway's default MEDIASEARCH_GATEWAY_MAX_TOP_K
RSS_LIMIT_MB = 2048
SLOW_S = 10.0  # the gateway's deadline is 5 s: a call that takes longer escaped it


@dataclass
class GatewayReport:
    calls: int = 0
    undefined: int = 0  # calls answered with a status outside DEFINED (INTERNAL, UNKNOWN, ...)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    problems: list[str] = field(default_factory=list)
    max_rss_mb: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        codes = " ".join(f"{name}:{n}" for name, n in self.statuses.most_common())
        return (
            f"  gateway: calls={self.calls} problems={len(self.problems)} max_rss_mb={self.max_rss_mb} "
            f"({self.seconds:.0f}s) [{codes}]"
        )


class LiveGateway:
    """A running ``mediasearch serve`` and a generic client of it."""

    def __init__(self, child: Child, port: int, log_path: Path) -> None:
        self.child, self.log_path = child, log_path
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        self.report = GatewayReport()
        stats = search_pb2.StatsResponse.FromString(self._call("Stats", b"", 30.0)[2])
        self.model_version: str = stats.model_version
        page = search_pb2.SearchResponse.FromString(
            self._call(
                "SearchText",
                search_pb2.SearchTextRequest(text="a red circle", top_k=1).SerializeToString(),
                30,
            )[2]
        )
        # a real token, read with the known key: the width of the vectors, and a check that
        # request_fingerprint() says what the gateway says
        token = decode_token(
            page.next_page_token, SECRET, fingerprint=request_fingerprint(("text", "a red circle"), 1),
            model_version=self.model_version,
        )  # fmt: skip
        self.dim = len(token.vector)
        ids = search_pb2.SearchResponse.FromString(
            self._call(
                "SearchText", search_pb2.SearchTextRequest(text="scene", top_k=SCENES).SerializeToString(), 30
            )[2]
        )
        self.image_ids = [r.id for r in ids.results]

    def _call(self, method: str, payload: bytes, timeout_s: float) -> tuple[grpc.StatusCode, str, bytes]:
        stub = self.channel.unary_unary(
            f"/{SERVICE}/{method}", request_serializer=None, response_deserializer=None
        )
        try:
            return SC.OK, "", stub(payload, timeout=timeout_s)
        except grpc.RpcError as err:
            return err.code(), err.details() or "", b""

    def check(self, call: Call) -> str | None:
        """Make the call; what is wrong with its outcome (None: a defined status, in time)."""
        started = time.monotonic()
        code, details, reply = self._call(call.method, call.payload, SLOW_S * 3)
        took = time.monotonic() - started
        self.report.calls += 1
        self.report.statuses[code.name] += 1
        problem = None
        if code not in DEFINED:
            self.report.undefined += 1
            alive = "" if self.child.running() else " (the gateway exited)"
            problem = f"{call.method} -> {code.name}{alive}: {details[:200]!r} for {call.what}"
        elif took > SLOW_S:
            problem = f"{call.method} took {took:.1f}s ({code.name}) for {call.what}"
        elif code == SC.OK:
            problem = _bad_reply(call.method, reply)
            problem = problem and f"{call.method} -> OK but {problem} for {call.what}"
        if problem is not None:
            self.report.problems.append(problem)
        return problem

    def rss_mb(self) -> int:
        """The gateway's peak resident memory so far (VmHWM)."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.child.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
        return 0

    def health_problems(self) -> list[str]:
        """What is wrong with the gateway after the calls so far: exited, over its memory limit, or
        a traceback in its log."""
        problems = []
        self.report.max_rss_mb = max(self.report.max_rss_mb, self.rss_mb())
        if not self.child.running():
            problems.append(f"the gateway exited (status {self.child.returncode})")
        if self.report.max_rss_mb > RSS_LIMIT_MB:
            problems.append(
                f"the gateway's peak memory was {self.report.max_rss_mb} MB (limit {RSS_LIMIT_MB})"
            )
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        for marker in ("Traceback (most recent call last)", "unhandled error", "Unexpected ["):
            if marker in text:
                at = text.index(marker)
                problems.append(f"the gateway logged {marker!r}: {text[max(0, at - 300) : at + 900]}")
        return problems

    def finish(self) -> GatewayReport:
        """The report, with the health problems added."""
        self.report.problems += self.health_problems()
        return self.report


def _bad_reply(method: str, reply: bytes) -> str | None:
    try:
        response = RESPONSES[method].FromString(reply)
    except DecodeError:
        return "the answer does not parse"
    if method.startswith("Search") and len(response.results) > MAX_TOP_K:
        return f"{len(response.results)} results"
    return None


@contextlib.contextmanager
def live_gateway(folder: Path, repository: Path, scenes: int = SCENES) -> Iterator[LiveGateway]:
    """Index ``scenes`` scenes under ``folder`` with the model in ``repository``, serve them."""
    from mediasearch.export.micro.scenes import write_gallery
    from mediasearch.gateway.app import embedded_settings
    from mediasearch.indexer.folder import index_folder
    from mediasearch.settings import Settings

    gallery = folder / "gallery"
    write_gallery(gallery, scenes, seed=5)
    overrides: dict[str, object] = {
        **embedded_settings(folder / "state"),
        "model_repository": repository,
        "images_root": gallery,
    }
    report = index_folder(Settings.defaults().with_overrides(**overrides), gallery)
    assert report.indexed == scenes, report.summary()
    env = {
        f"MEDIASEARCH_{k.upper()}": json.dumps(v) if isinstance(v, tuple) else str(v)
        for k, v in overrides.items()
    }
    env["MEDIASEARCH_GATEWAY_TOKEN_SECRET"] = SECRET
    child, port, _ = start_gateway("gateway", env, folder)
    with child:
        gateway = LiveGateway(child, port, folder / "gateway.log")
        try:
            yield gateway
        finally:
            gateway.channel.close()


SETTINGS = settings(
    deadline=None,
    database=None,  # nothing written into the repository (no .hypothesis/)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def run_examples(strategy: st.SearchStrategy[Call], check: Callable[[Call], object], examples: int) -> None:
    """``check`` on ``examples`` calls drawn from ``strategy`` (hypothesis shrinks what fails)."""

    def one(call: Call) -> None:
        check(call)

    given(strategy)(settings(SETTINGS, max_examples=examples)(one))()


def fuzz_live_gateway(seconds: float, work: Path, examples_per_round: int = 25) -> GatewayReport:
    """``make fuzz``'s gateway part: rounds over every request kind until ``seconds`` pass."""
    repository = _micro_repository(work / "model_repository")
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp, live_gateway(Path(tmp), repository) as gateway:
        kinds = strategies(gateway, seed_images())
        while time.monotonic() - started < seconds:
            for strategy in kinds.values():
                run_examples(strategy, gateway.check, examples_per_round)  # problems are recorded
        report = gateway.finish()
    report.seconds = time.monotonic() - started
    return report


def _micro_repository(out: Path) -> Path:
    """The committed micro CLIP exported into ``out`` (once: reused while its manifest is there)."""
    if not (out / "clip.manifest.json").is_file():
        from mediasearch.export import export_model
        from mediasearch.export.micro import MODEL_DIR

        export_model(str(MODEL_DIR), out, "clip")
    return out
