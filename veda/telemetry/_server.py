"""The Prometheus endpoint: ``/metrics`` on 127.0.0.1, served by prometheus-client."""

from __future__ import annotations

from typing import Any

import numpy as np

from veda.errors import TelemetryError


class MetricsServer:
    """A running ``/metrics`` endpoint; :meth:`close` stops it (also on ``with`` exit)."""

    def __init__(self, server: Any, thread: Any) -> None:
        self._server = server
        self._thread = thread
        self.host = "127.0.0.1"
        self.port: int = int(server.server_port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<veda metrics server {self.url}>"


def serve(port: int = 0) -> MetricsServer:
    """Serve veda's metrics in the Prometheus format at ``http://127.0.0.1:<port>/metrics``.

    ``port=0`` picks a free port; the handle's ``.port`` and ``.url`` say which.  Needs the
    optional ``prometheus-client`` package (``pip install "veda[telemetry]"``).
    """
    if isinstance(port, np.integer):
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise TelemetryError(
            f"veda.telemetry.serve: port must be an integer from 0 to 65535 (0: any free "
            f"port), not {port!r}"
        )
    try:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError as exc:
        raise TelemetryError(
            "veda.telemetry.serve needs prometheus-client: pip install prometheus-client"
        ) from exc
    from veda.telemetry._registry import registry as veda_registry
    from veda.telemetry._snapshot import Snapshot

    class _Collector:
        def collect(self) -> Any:
            # One source of truth: the exposition text veda writes itself.
            yield from text_string_to_metric_families(Snapshot.take(veda_registry).to_prometheus())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    try:
        server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as exc:
        raise TelemetryError(f"cannot serve metrics on 127.0.0.1:{port}: {exc}") from exc
    return MetricsServer(server, thread)
