"""The server's load in ORCA form (`xds.data.orca.v3.OrcaLoadReport`, from the published xds protos), for
balancers that weigh replicas by the load they report themselves: Envoy's client_side_weighted_round_robin, gRPC's
weighted_round_robin. It goes in-band, in the trailers of every generation call (`endpoint-load-metrics-bin`),
and out-of-band, every `report_interval` on `xds.service.orca.v3.OpenRcaService/StreamCoreMetrics`.

- application_utilization: how full the server is, the larger of its admission's occupancy ((running + waiting)
  / --max-running: 1 at the batch limit, more with a queue) and the engine's KV-cache use. Such a balancer
  weighs a replica by its request rate over this, so a replica that serves as many requests with room to spare
  gets more of them.
- rps_fractional and eps: the calls it finished, and those that failed, per second over the last
  RATE_SECONDS. A weighted balancer needs them: gRPC's and Envoy's weighted round robin weigh a replica by its
  reported rate over its utilization (and treat a replica reporting none as average).
- named_metrics: `num_requests_running`, `num_requests_waiting` and, where the engine reports it,
  `kv_cache_usage_perc` (0-1): the figures the Gateway API Inference Extension's endpoint picker reads from
  vLLM's metrics, under vLLM's names.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable

import grpc
from xds.data.orca.v3.orca_load_report_pb2 import OrcaLoadReport
from xds.service.orca.v3.orca_pb2 import OrcaLoadReportRequest

from chatgen.chat.admission import Admission

# The trailer gRPC and Envoy read an in-band report from (binary: the serialized message).
ORCA_TRAILER = "endpoint-load-metrics-bin"
ORCA_SERVICE = "xds.service.orca.v3.OpenRcaService"
# The shortest out-of-band interval served (a caller asking for less gets this): the load changes with every
# request, but a report per step would cost more than it tells. gRPC's own ORCA service holds its callers to 30 s
# by default; a balancer of LLM streams wants to know within a second.
MIN_REPORT_SECONDS = 0.5
# The window the reported rates are counted over: long enough to hold a few calls of a loaded replica, short
# enough to follow a change in load within a few reports.
RATE_SECONDS = 2.0


class LoadReports:
    def __init__(self, admission: Admission, kv_cache_usage: Callable[[], float | None]) -> None:
        """`kv_cache_usage`: the engine's last KV-cache use (0-1), None where it reports none; a callable, so
        that the transport reads the engine's figure without depending on the engine layer."""
        self._admission = admission
        self._kv_cache_usage = kv_cache_usage
        # When recent calls ended (monotonic seconds), all of them and the failed ones.
        self._ended: collections.deque[float] = collections.deque()
        self._failed: collections.deque[float] = collections.deque()

    def call_ended(self, ok: bool) -> None:
        now = time.monotonic()
        self._ended.append(now)
        if not ok:
            self._failed.append(now)

    def report(self) -> OrcaLoadReport:
        running, waiting = self._admission.running, self._admission.waiting
        kv = self._kv_cache_usage()
        occupancy = (running + waiting) / self._admission.limits.max_running
        now = time.monotonic()
        report = OrcaLoadReport(
            application_utilization=max(occupancy, kv or 0.0),
            rps_fractional=_per_second(self._ended, now),
            eps=_per_second(self._failed, now),
        )
        report.named_metrics["num_requests_running"] = running
        report.named_metrics["num_requests_waiting"] = waiting
        if kv is not None:
            report.named_metrics["kv_cache_usage_perc"] = kv
        return report

    def trailer(self) -> tuple[str, bytes]:
        return ORCA_TRAILER, self.report().SerializeToString()

    def handler(self) -> grpc.GenericRpcHandler:
        """OpenRcaService (its one method) for grpc's server; open to callers without an API key, as health is."""
        method = grpc.unary_stream_rpc_method_handler(
            self._stream,
            request_deserializer=OrcaLoadReportRequest.FromString,
            response_serializer=OrcaLoadReport.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(ORCA_SERVICE, {"StreamCoreMetrics": method})

    async def _stream(
        self, request: OrcaLoadReportRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[OrcaLoadReport]:
        """A report now, then one every `report_interval` until the caller goes away or the server stops."""
        interval = max(request.report_interval.ToTimedelta().total_seconds(), MIN_REPORT_SECONDS)
        while True:
            yield self.report()
            await asyncio.sleep(interval)


def _per_second(times: collections.deque[float], now: float) -> float:
    """How many of `times` fall in the last RATE_SECONDS, per second (older ones are dropped)."""
    while times and times[0] < now - RATE_SECONDS:
        times.popleft()
    return len(times) / RATE_SECONDS
