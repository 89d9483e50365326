"""The release binary started on 127.0.0.1 for a test or a load script.

`serve(args)` runs `segscore --log-format json serve --addr 127.0.0.1:0 ARGS`
and returns the process and its address once it logs `serving`: readiness
is an event the server reports, not a guess at how long start-up takes.
`timeout` only bounds a server that never gets there.
"""

import json
import os
import queue
import subprocess
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("SEGSCORE_BIN", ROOT / "target" / "release" / "segscore"))


def serve(args, binary=BIN, timeout=60.0):
    """(process, "127.0.0.1:PORT") of a server started with `serve ARGS`."""
    proc, addr, _ = serve_with_http(args, binary, timeout, http=False)
    return proc, addr


def serve_with_http(args, binary=BIN, timeout=60.0, http=True):
    """(process, gRPC address, HTTP address) of a server started with
    `serve --http-addr 127.0.0.1:0 ARGS` (HTTP address None without `http`)."""
    http_addr = None
    if http:
        args = ["--http-addr", "127.0.0.1:0", *args]
    if not Path(binary).exists():
        raise FileNotFoundError(f"{binary} is missing: run `cargo build --release` first")
    proc = subprocess.Popen(
        [str(binary), "--log-format", "json", "serve", "--addr", "127.0.0.1:0", *map(str, args)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        while True:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"the server did not report `serving` within {timeout} s") from None
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            fields = rec.get("fields", {})
            if "http_addr" in fields:
                http_addr = fields["http_addr"]
            if fields.get("message") == "serving":
                return proc, fields["addr"], http_addr
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def stop(proc) -> int:
    """SIGTERM, then the exit code (a graceful shutdown exits 0)."""
    proc.terminate()
    return proc.wait(timeout=30)
