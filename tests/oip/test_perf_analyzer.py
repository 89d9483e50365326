"""Triton's perf_analyzer, unmodified, against the release binary over gRPC.

perf_analyzer is the third-party load generator Triton users measure with; it
needs ModelMetadata, ModelConfig, ModelStatistics (server-side figures,
before and after each window) and ModelInfer to agree with what Triton
answers, so a run that completes with no error is the compatibility check.
The run is bounded by request counts (`count_windows`), not by time: how
fast this machine is changes how long it takes, not whether it passes.

tritonclient 2.73 no longer ships the binary; `make perf-analyzer` installs
the last wheel that does (tritonclient 2.40.0, into .venv/perf-analyzer, apart
from the venv's own tritonclient) with the libcudart.so.12 it links against
(the PyPI nvidia-cuda-runtime-cu12 wheel; no GPU is used) and Debian's
libb64-0d. Without them this test fails, naming the fix: it never skips.
"""

import csv
import os
import subprocess
from pathlib import Path

import pytest
import tritonclient.grpc as triton

from served import BIN, serve, stop

ROOT = Path(__file__).resolve().parents[2]
PREFIX = ROOT / ".venv" / "perf-analyzer"
PERF_ANALYZER = Path(os.environ.get("PERF_ANALYZER", PREFIX / "bin" / "perf_analyzer"))
CUDART = PREFIX / "nvidia" / "cuda_runtime" / "lib"
# Requests per measurement window, and at most this many windows per
# concurrency level: the run is bounded whatever the machine's speed.
WINDOW_REQUESTS = 200
MAX_TRIALS = 5


@pytest.fixture(scope="module")
def server():
    if not BIN.exists():
        pytest.fail(f"{BIN} is missing: run `cargo build --release` first")
    proc, addr = serve(["--model-repository", ROOT / "models"])
    try:
        yield addr
    finally:
        assert stop(proc) == 0


def run_perf_analyzer(args, tmp_path):
    if not PERF_ANALYZER.exists():
        pytest.fail(f"{PERF_ANALYZER} is missing: run `make perf-analyzer`")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(filter(None, [str(CUDART), env.get("LD_LIBRARY_PATH")]))
    out = subprocess.run(
        [str(PERF_ANALYZER), *args],
        capture_output=True, text=True, env=env, cwd=tmp_path,
        # Only a bound on a hung run; the work itself is bounded by counts.
        timeout=600,
    )
    if "error while loading shared libraries" in out.stderr:
        pytest.fail(
            "perf_analyzer cannot start (libb64.so.0d comes from Debian's libb64-0d, "
            f"libcudart.so.12 from `make perf-analyzer`):\n{out.stderr}"
        )
    return out


def test_perf_analyzer_completes_without_errors(server, tmp_path):
    client = triton.InferenceServerClient(url=server)

    def counts():
        (s,) = client.get_inference_statistics("churn", "2", as_json=True)["model_stats"]
        stats = s.get("inference_stats", {})
        return tuple(int(stats.get(k, {}).get("count", 0)) for k in ("success", "fail"))

    before = counts()
    report = tmp_path / "perf.csv"
    out = run_perf_analyzer(
        [
            "-m", "churn", "-x", "2",
            "-u", server, "-i", "grpc",
            "-b", "1",
            "--concurrency-range", "1:4:3",
            "--measurement-mode", "count_windows",
            "--measurement-request-count", str(WINDOW_REQUESTS),
            "--max-trials", str(MAX_TRIALS),
            # Any three windows count as stable: on a busy shared machine
            # latency varies, and this test checks compatibility, not speed.
            "--stability-percentage", "1000",
            # Zeros are inside every shipped feature's range (and category
            # code 0 exists); random floats would be refused as out of range.
            "--input-data", "zero",
            "-f", str(report),
        ],
        tmp_path,
    )
    assert out.returncode == 0, f"perf_analyzer failed:\n{out.stdout}\n{out.stderr}"
    rows = list(csv.DictReader(report.open()))
    assert [int(r["Concurrency"]) for r in rows] == [1, 4], rows
    assert all(float(r["Inferences/Second"]) > 0 for r in rows), rows
    # Every request it sent was scored: none failed on the server.
    success, fail = counts()
    assert fail == before[1], out.stdout
    assert success - before[0] >= len(rows) * WINDOW_REQUESTS
