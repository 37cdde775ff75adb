"""Normal load, side by side: many clients against this checkout's gateway and against a baseline checkout's.

Issue 17's reference load: 50 clients for 30 s, each request 16 PNG images (multipart) to /cluster,
as fast as answers come back. For each gateway (`python -m serve`, embedded backend, the same exported
model and the same request bodies), started in turn on 127.0.0.1, it prints the requests answered, the
5xx and other non-200 answers, wrong answers (results that differ from the first answer to the same
body), requests whose connection closed before any answer ("dropped"), p50/p95/p99 latency and the
server's RSS before, at its peak and after. The hardening of issue
17 must not cost the normal case: 0 5xx, p99 within 20% of the baseline's (the checkout before it).

Default model: CC with the small CNN at 16 px (random weights), inputs 64x64 PNG photos-like images.

    python bench/gateway_soak.py --baseline /work/main          # this checkout vs the one at /work/main
    python bench/gateway_soak.py --clients 10 --seconds 10     # this checkout alone, shorter
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DROPPED = 0
"""Status recorded for a request whose connection closed before an answer (no HTTP status)."""
sys.path.insert(0, str(ROOT))

from bench.gateway_load import free_port, make_model, multipart, percentile, random_pngs, start_gateway, wait_ready  # noqa: E402,I001


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def soak(url: str, body: bytes, content_type: str, clients: int, seconds: float) -> dict[str, object]:
    """`clients` loops of POST /cluster for `seconds` -> counts, latencies, wrong answers."""
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    expected: list[int] | None = None
    wrong = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        deadline = time.monotonic() + seconds

        async def loop() -> None:
            nonlocal expected, wrong
            while time.monotonic() < deadline:  # bounded: stops at the deadline
                began = time.perf_counter()
                try:
                    r = await client.post("/cluster", content=body, headers={"content-type": content_type})
                except httpx.TransportError:  # the connection closed under the request: counted, not fatal
                    statuses[DROPPED] = statuses.get(DROPPED, 0) + 1
                    continue
                latencies.append(time.perf_counter() - began)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    clusters = [x.get("cluster") for x in r.json()["results"]]
                    expected = expected or clusters
                    wrong += clusters != expected

        await asyncio.gather(*(loop() for _ in range(clients)))
    return {"latencies": latencies, "statuses": statuses, "wrong": wrong}


def server_closed(url: str) -> dict[str, float]:
    """Connections the server closed, by reason, from its /metrics (gateways that count them; else empty)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {sample.labels["reason"]: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == "gateway_connections_closed_total"}


def run_one(label: str, source: Path, repository: Path, body: bytes, content_type: str,
            args: argparse.Namespace) -> dict[str, object]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_gateway(repository, port, args, source)
    try:
        asyncio.run(wait_ready(url, process))
        asyncio.run(soak(url, body, content_type, 2, 1.0))  # warm-up
        before = rss_mb(process.pid)
        result = asyncio.run(soak(url, body, content_type, args.clients, args.seconds))
        result.update(label=label, rss_before=before, rss_peak=rss_mb(process.pid, "VmHWM"),
                      rss_after=rss_mb(process.pid), closed=server_closed(url))
        return result
    finally:
        process.terminate()
        process.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="another checkout to run side by side (e.g. /work/main)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0, help="load duration per gateway")
    parser.add_argument("--images", type=int, default=16, help="PNG images per request")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (this, baseline, this, ...)")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    args = parser.parse_args(argv)

    sources = [("this checkout", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    results = []
    with tempfile.TemporaryDirectory(prefix="gateway-soak-") as tmp:
        pngs = random_pngs(args.images, 64)
        repository, name = make_model(Path(tmp), pngs, size=16, backbone="smallcnn")
        body, content_type = multipart(pngs)
        for r in range(args.rounds):
            for label, source in sources:
                results.append(run_one(label, source, repository, body, content_type, args))
                res = results[-1]
                print(f"round {r + 1} {label}: {len(res['latencies'])} requests", flush=True)

    print(f"\nmodel {name}, {args.images} PNG images/request (64x64, {len(body) / 1024:.0f} KiB body), "
          f"{args.clients} clients x {args.seconds:.0f} s, {os.cpu_count()} CPUs, embedded backend")
    print(f"{'gateway':<14} {'requests':>8} {'5xx':>5} {'other':>6} {'dropped':>7} {'wrong':>6} {'p50 ms':>7} "
          f"{'p95 ms':>7} {'p99 ms':>7} {'RSS MB before/peak/after':>26}")
    p99 = {}
    for res in results:
        lat, statuses = res["latencies"], res["statuses"]
        server_errors = sum(n for code, n in statuses.items() if code >= 500)
        other = sum(n for code, n in statuses.items() if code not in (200, DROPPED) and code < 500)
        p99.setdefault(res["label"], []).append(percentile(lat, 99))
        print(f"{res['label']:<14} {len(lat):>8} {server_errors:>5} {other:>6} {statuses.get(DROPPED, 0):>7} "
              f"{res['wrong']:>6} "
              f"{percentile(lat, 50) * 1000:7.0f} {percentile(lat, 95) * 1000:7.0f} {percentile(lat, 99) * 1000:7.0f} "
              f"{res['rss_before']:8.0f} / {res['rss_peak']:5.0f} / {res['rss_after']:5.0f}"
              + (f"  server closed: {res['closed']}" if res["closed"] else ""))
    if args.baseline:
        ratio = float(np.median(p99["this checkout"]) / np.median(p99["baseline"]))
        errors = sum(n for res in results if res["label"] == "this checkout"
                     for code, n in res["statuses"].items() if code >= 500)
        print(f"p99 this / baseline: {ratio:.2f} (target <= 1.20: {'met' if ratio <= 1.2 else 'NOT met'}); "
              f"5xx here: {errors} (target 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
