"""Memory and admission under huge requests (issue 16, item 6); not a test.

Starts the release binary on 127.0.0.1 with the shipped models and sends
ROUNDS rounds of CONCURRENCY concurrent ModelInfer requests of ROWS rows each
(tritonclient, raw FP32 tensors). After every round it prints the server's
resident set (VmRSS, VmHWM), the heap as jemalloc reports it on /metrics
(allocated: what the program holds, which a leak makes grow; resident: what
the allocator maps), how many requests were scored or refused, and how
long the refusals took to come back: a request the queue cannot take must be
refused at once, not after its rows were decoded and encoded. Last, after
IDLE seconds without traffic, the resident set once jemalloc has returned
freed pages (its decay is 10 s).

    .venv/bin/python tests/load/huge_requests.py [--rounds 6] [--concurrency 8] \
        [--rows 1000000] [--idle 15] [--bin target/release/segscore] [-- extra serve flags]
"""

import argparse
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "training"))
import features as F  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "oip"))
from served import serve, stop  # noqa: E402


def rss(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) // 1024  # MiB
    return out


def heap(metrics_addr: str) -> dict:
    """jemalloc's allocated and resident bytes (MiB) from /metrics."""
    text = urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=60).read().decode()
    out = {}
    for line in text.splitlines():
        for key in ("allocated", "resident"):
            prefix = f"segscore_allocator_{key}_bytes "
            if line.startswith(prefix):
                out[key] = int(float(line[len(prefix):])) // (1 << 20)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--idle", type=float, default=15.0, help="seconds to idle before the last reading")
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "segscore"))
    ap.add_argument("extra", nargs="*", help="extra `serve` flags (after --)")
    args = ap.parse_args()

    metrics_addr = f"127.0.0.1:{free_port()}"
    proc, addr = serve(
        ["--metrics-addr", metrics_addr, "--model-repository", ROOT / "models", *args.extra],
        binary=args.bin, timeout=120,
    )
    try:
        # Valid rows: the golden set, repeated.
        golden = F.to_matrix(F.impute(F.read_feature_csv(ROOT / "models/churn/2/golden.csv")))
        x = np.resize(golden, (args.rows, golden.shape[1])).astype(np.float32)
        print(f"idle: {rss(proc.pid)} heap={heap(metrics_addr)}", flush=True)
        for r in range(args.rounds):
            results = []

            def one() -> None:
                c = triton.InferenceServerClient(addr)
                inp = triton.InferInput("features", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                t0 = time.monotonic()
                try:
                    c.infer("churn", [inp], model_version="2", client_timeout=600)
                    results.append(("ok", time.monotonic() - t0, ""))
                except InferenceServerException as e:
                    results.append((e.status(), time.monotonic() - t0, e.message()[:80]))

            threads = [threading.Thread(target=one) for _ in range(args.concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            ok = [d for s, d, _ in results if s == "ok"]
            refused = [(s, d, m) for s, d, m in results if s != "ok"]
            print(f"round {r + 1}: {rss(proc.pid)} heap={heap(metrics_addr)} ok={len(ok)} "
                  f"ok_s={max(ok, default=0):.2f} refused={len(refused)} "
                  f"refused_s={[round(d, 2) for _, d, _ in refused]} "
                  f"{refused[0][0] + ' ' + refused[0][2] if refused else ''}", flush=True)
        # jemalloc returns dirty pages after its decay time (10 s), without
        # any traffic: the resident set once the server has idled.
        time.sleep(args.idle)
        print(f"after {args.idle} s idle: {rss(proc.pid)} heap={heap(metrics_addr)}", flush=True)
    finally:
        stop(proc)


if __name__ == "__main__":
    sys.exit(main())
