"""The supervisor's /metrics: every frontend's families, each sample labelled with its `frontend` index.

Each frontend serves its own registry on loopback (chatgen.metrics, vLLM's `vllm:*` families included); a scrape
of the supervisor reads them all then, so nothing is cached or summed by hand and every family keeps its type.
Prometheus sums across the label (`sum without (frontend) (...)`) where one figure for the server is wanted."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Callable, Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

LABEL = "frontend"


def _scrape(port: int, timeout: float) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
        return str(response.read().decode())


class FrontendMetrics(Collector):
    """`ports()`: each frontend's metrics port, by index (0: not serving metrics yet)."""

    def __init__(self, ports: Callable[[], list[int]], timeout: float = 5.0) -> None:
        self._ports = ports
        self._timeout = timeout

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for index, port in enumerate(self._ports()):
            if not port:
                continue
            try:
                text = _scrape(port, self._timeout)
            except OSError as exc:
                # A frontend that is stopping: the others are still reported.
                log.warning("frontend %d's metrics did not answer: %s", index, exc)
                continue
            for family in text_string_to_metric_families(text):
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type)
                for sample in family.samples:
                    merged.samples.append(sample._replace(labels={**sample.labels, LABEL: str(index)}))
        return list(families.values())
