"""segscore against an unmodified standard client: tritonclient[grpc].

Starts the release binary on 127.0.0.1 (ephemeral port) with the shipped
models, then uses tritonclient for readiness, metadata and ModelInfer, and raw
grpcio for grpc.health.v1; scores are compared with onnxruntime in Python on
the same rows.
"""

import sys
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton

from served import BIN, serve, stop  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "training"))
import features as F  # noqa: E402



@pytest.fixture(scope="module")
def server():
    if not BIN.exists():
        pytest.fail(f"{BIN} is missing: run `cargo build --release` first")
    proc, addr = serve(["--model-repository", ROOT / "models"])
    try:
        yield addr
    finally:
        assert stop(proc) == 0


def golden_rows(name: str, version: int):
    d = ROOT / "models" / name / str(version)
    df = F.read_feature_csv(d / "golden.csv")
    return F.to_matrix(F.impute(df)), d / "model.onnx"


def test_readiness_and_metadata(server):
    client = triton.InferenceServerClient(url=server)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("churn")
    assert not client.is_model_ready("churn", model_version="99")
    # As Triton: an unknown model is not ready, not an error.
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("churn", as_json=True)
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"][0] == {"name": "features", "datatype": "FP32", "shape": ["-1", "12"]}
    assert meta["outputs"][0]["name"] == "score"
    assert client.get_server_metadata(as_json=True)["name"] == "segscore"


@pytest.mark.parametrize("name,version", [("churn", 2), ("ltv", 1), ("propensity", 2)])
def test_model_infer_matches_onnxruntime(server, name, version):
    x, onnx_path = golden_rows(name, version)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"features": x})
    reference = out[1][:, 1] if name != "ltv" else out[0][:, 0]

    client = triton.InferenceServerClient(url=server)
    inp = triton.InferInput("features", list(x.shape), "FP32")
    # tritonclient's gRPC client sends raw_input_contents (little-endian).
    inp.set_data_from_numpy(x)
    result = client.infer(
        name,
        [inp],
        model_version=str(version),
        request_id="abc",
        outputs=[triton.InferRequestedOutput("score")],
    )
    got = result.as_numpy("score")
    assert got.shape == (x.shape[0],)
    assert result.get_response().id == "abc"
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)


def test_model_config_as_triton_writes_it(server):
    client = triton.InferenceServerClient(url=server)
    config = client.get_model_config("churn", as_json=True)["config"]
    assert config["name"] == "churn"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["backend"] == "onnxruntime"
    assert int(config["max_batch_size"]) > 0
    assert config["input"][0] == {"name": "features", "data_type": "TYPE_FP32", "dims": ["12"]}
    assert config["output"][0]["name"] == "score"
    assert config["output"][0]["data_type"] == "TYPE_FP32"
    assert config["output"][0]["dims"] == ["1"]
    assert client.get_model_config("churn", "1", as_json=True)["config"]["platform"] == "smartcore"
    with pytest.raises(triton.InferenceServerException) as err:
        client.get_model_config("nope")
    assert "StatusCode.NOT_FOUND" in str(err.value.status())


def test_statistics_count_what_was_scored(server):
    client = triton.InferenceServerClient(url=server)

    def stats():
        (s,) = client.get_inference_statistics("propensity", "2", as_json=True)["model_stats"]
        return s

    before = stats()
    x, _ = golden_rows("propensity", 2)
    inp = triton.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client.infer("propensity", [inp], model_version="2")
    after = stats()
    # proto3 JSON leaves zero counters out and writes uint64 as strings.
    count = lambda s, k: int(s.get(k, 0))  # noqa: E731
    assert count(after, "inference_count") - count(before, "inference_count") == x.shape[0]
    assert count(after, "execution_count") > count(before, "execution_count")
    success = lambda s: int(s.get("inference_stats", {}).get("success", {}).get("count", 0))  # noqa: E731
    assert success(after) == success(before) + 1
    assert int(after["inference_stats"]["compute_infer"]["ns"]) > 0
    every = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {("churn", "1"), ("churn", "2"), ("ltv", "1")} <= {(s["name"], s["version"]) for s in every}


def test_repository_index_lists_every_version(server):
    client = triton.InferenceServerClient(url=server)
    index = client.get_model_repository_index(as_json=True)["models"]
    ready = {(m["name"], m["version"]) for m in index if m.get("state") == "READY"}
    assert {("churn", "1"), ("churn", "2"), ("ltv", "1"), ("propensity", "2")} <= ready
    assert all(m.get("state") == "READY" or m.get("reason") for m in index)


def test_unknown_model_is_not_found(server):
    client = triton.InferenceServerClient(url=server)
    inp = triton.InferInput("features", [1, 12], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 12), dtype=np.float32))
    with pytest.raises(triton.InferenceServerException) as err:
        client.infer("nope", [inp])
    assert "StatusCode.NOT_FOUND" in str(err.value.status())


def test_grpc_health_v1(server):
    # HealthCheckRequest{service} / HealthCheckResponse{status}: encoded by
    # hand so no extra package is needed; SERVING = 1 -> b"\x08\x01".
    with grpc.insecure_channel(server) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        assert check(b"") == b"\x08\x01"
        assert check(b"\n\x05churn") == b"\x08\x01"
        for service in (b"segscore.v1.Scoring", b"inference.GRPCInferenceService"):
            assert check(b"\n" + bytes([len(service)]) + service) == b"\x08\x01"
        with pytest.raises(grpc.RpcError) as err:
            check(b"\n\x04nope")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
