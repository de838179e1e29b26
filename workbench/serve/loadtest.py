"""A small load test of a running ``workbench serve``: concurrent clients posting one image.

Used by the test suite and by benchmark scripts::

    url, stop = start_server(create_app(model))
    stats = load_test(url, Path("image.png").read_bytes(), clients=8, requests=25)
    print(stats["p50_ms"], stats["p95_ms"])
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import numpy as np

__all__ = ["load_test"]


def load_test(url: str, image_bytes: bytes, clients: int = 8, requests: int = 25, *,
              filename: str = "image.png", box: str | None = None, explain: bool = True,
              expect_p: float | None = None, warmup: int = 1, timeout: float = 120.0) -> dict[str, Any]:
    """``clients`` threads each post ``requests`` predictions, all starting together.

    Parameters
    ----------
    url : str
        The server's base URL (as :func:`workbench.serve.start_server` returns it);
        requests go to its ``api/predict``.
    image_bytes : bytes
        The image file sent every time.
    clients, requests : int
        Concurrent clients, and requests per client.
    filename, box, explain
        The form sent with the image (``box`` as ``"x0,y0,x1,y1"``).
    expect_p : float, optional
        The right ``p_positive`` (or top-class probability); answers that differ are
        counted in ``wrong``.
    warmup : int
        Requests sent (one at a time) before the clients start and not counted: the
        first prediction pays for lazy imports (e.g. matplotlib) and would skew the tail.
    timeout : float
        Seconds one request may take.

    Returns
    -------
    dict
        ``sent``, ``answered`` (responses received), ``ok`` (200s), ``statuses``
        (code -> count), ``errors`` (first few transport errors), ``wrong``,
        ``p_values`` (distinct probabilities returned), latencies ``p50_ms``,
        ``p95_ms``, ``mean_ms``, ``max_ms``, and ``wall_s``, ``throughput_rps``.
    """
    import httpx  # a test dependency; imported only when a load test runs

    endpoint = url if url.rstrip("/").endswith("/api/predict") else url.rstrip("/") + "/api/predict"
    data = {"explain": "true" if explain else "false"}
    if box is not None:
        data["box"] = box
    start = threading.Barrier(clients)
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    p_values: list[float] = []

    def client() -> None:
        with httpx.Client(timeout=timeout) as http:
            start.wait()
            for _ in range(requests):
                t0 = time.perf_counter()
                try:
                    r = http.post(endpoint, files={"file": (filename, image_bytes)}, data=data)
                except httpx.HTTPError as e:
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    continue
                dt = time.perf_counter() - t0
                p = None
                if r.status_code == 200:
                    body = r.json()
                    p = body["p_positive"] if body["p_positive"] is not None else max(body["proba"].values())
                with lock:
                    latencies.append(dt)
                    statuses[r.status_code] += 1
                    if p is not None:
                        p_values.append(float(p))

    with httpx.Client(timeout=timeout) as http:
        for _ in range(warmup):
            http.post(endpoint, files={"file": (filename, image_bytes)}, data=data)

    threads = [threading.Thread(target=client, name=f"load-client-{i}") for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat_ms = np.asarray(latencies) * 1e3
    has = lat_ms.size > 0
    return {
        "clients": clients, "requests": requests, "warmup": warmup,
        "sent": clients * requests, "answered": len(latencies), "ok": statuses.get(200, 0),
        "statuses": dict(statuses), "errors": errors[:5],
        "wrong": sum(p != expect_p for p in p_values) if expect_p is not None else None,
        "p_values": sorted(set(p_values)),
        "p50_ms": float(np.percentile(lat_ms, 50)) if has else None,
        "p95_ms": float(np.percentile(lat_ms, 95)) if has else None,
        "mean_ms": float(lat_ms.mean()) if has else None,
        "max_ms": float(lat_ms.max()) if has else None,
        "wall_s": wall, "throughput_rps": len(latencies) / wall if wall > 0 else None,
    }
