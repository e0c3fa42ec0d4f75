"""Prometheus metrics of the search gateway, in a registry of its own (several gateways can live in
one process, as in tests), served over HTTP by :meth:`GatewayMetrics.serve`."""

from __future__ import annotations

import grpc
from prometheus_client import Counter, Gauge, Histogram

from mediasearch.metrics import ServiceMetrics

STAGES = ("encode", "search", "merge", "metadata")
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.requests = Counter(
            "mediasearch_gateway_requests",
            "Requests by method, status code (gRPC's name) and protocol (grpc or http)",
            ["method", "code", "protocol"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mediasearch_gateway_request_seconds",
            "Whole request latency by method and protocol",
            ["method", "protocol"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.stage = Histogram(
            "mediasearch_gateway_stage_seconds",
            "Latency of one query-path stage (encode, search, merge, metadata) per request",
            ["stage"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.partial = Counter(
            "mediasearch_gateway_partial_responses",
            "Responses flagged partial (a shard did not answer)",
            registry=self.registry,
        )
        self.inflight = Gauge("mediasearch_gateway_inflight", "Searches in progress", registry=self.registry)
        for stage in STAGES:
            self.stage.labels(stage)

    def observe_call(
        self, method: str, code: grpc.StatusCode, seconds: float, protocol: str = "grpc"
    ) -> None:
        self.requests.labels(method, code.name, protocol).inc()
        self.latency.labels(method, protocol).observe(seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage).observe(seconds)
