"""segscore's REST front end against an unmodified standard client:
tritonclient[http] (KServe V2 REST with Triton's extensions).

Starts the release binary with `--http-addr` on an ephemeral port and uses
tritonclient.http over its whole surface: server and model metadata, model
config, statistics, repository index, readiness (false for what is not
served), and inference with JSON tensors and with the binary tensor data
extension, compared with onnxruntime in Python on the same rows.
"""

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from served import BIN, serve_with_http, stop  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "training"))
import features as F  # noqa: E402


@pytest.fixture(scope="module")
def server():
    if not BIN.exists():
        pytest.fail(f"{BIN} is missing: run `cargo build --release` first")
    proc, _, http_addr = serve_with_http(["--model-repository", ROOT / "models"])
    assert http_addr, "the server did not log its HTTP address"
    try:
        yield http_addr
    finally:
        assert stop(proc) == 0


def golden_rows(name: str, version: int):
    d = ROOT / "models" / name / str(version)
    df = F.read_feature_csv(d / "golden.csv")
    return F.to_matrix(F.impute(df)), d / "model.onnx"


def test_server_and_model_metadata_and_readiness(server):
    client = triton.InferenceServerClient(url=server)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("churn")
    assert client.is_model_ready("churn", model_version="1")
    assert not client.is_model_ready("churn", model_version="99")
    assert not client.is_model_ready("nope")
    server_meta = client.get_server_metadata()
    assert server_meta["name"] == "segscore"
    assert "model_repository" in server_meta["extensions"]
    meta = client.get_model_metadata("churn")
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"][0]["name"] == "features"
    assert meta["inputs"][0]["datatype"] == "FP32"
    assert meta["inputs"][0]["shape"] == [-1, 12]
    assert meta["outputs"][0]["name"] == "score"
    with pytest.raises(triton.InferenceServerException) as err:
        client.get_model_metadata("nope")
    assert err.value.status() == "404"


def test_model_config(server):
    client = triton.InferenceServerClient(url=server)
    config = client.get_model_config("churn")
    assert config["name"] == "churn"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] > 0
    assert config["input"][0] == {"name": "features", "data_type": "TYPE_FP32", "dims": [12]}
    assert config["output"][0]["data_type"] == "TYPE_FP32"
    assert client.get_model_config("churn", "1")["platform"] == "smartcore"


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("name,version", [("churn", 2), ("ltv", 1), ("propensity", 2)])
def test_infer_json_and_binary_match_onnxruntime(server, name, version, binary):
    x, onnx_path = golden_rows(name, version)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"features": x})
    reference = out[1][:, 1] if name != "ltv" else out[0][:, 0]

    client = triton.InferenceServerClient(url=server)
    inp = triton.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    result = client.infer(
        name,
        [inp],
        model_version=str(version),
        request_id="abc",
        outputs=[triton.InferRequestedOutput("score", binary_data=binary)],
    )
    got = result.as_numpy("score")
    assert got.shape == (x.shape[0],)
    assert result.get_response()["id"] == "abc"
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)


def test_statistics_count_what_was_scored(server):
    client = triton.InferenceServerClient(url=server)

    def stats():
        (s,) = client.get_inference_statistics("propensity", "2")["model_stats"]
        return s

    before = stats()
    x, _ = golden_rows("propensity", 2)
    inp = triton.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client.infer("propensity", [inp], model_version="2")
    after = stats()
    assert after["inference_count"] - before["inference_count"] == x.shape[0]
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    every = client.get_inference_statistics()["model_stats"]
    assert {("churn", "1"), ("churn", "2"), ("ltv", "1")} <= {(s["name"], s["version"]) for s in every}


def test_repository_index(server):
    client = triton.InferenceServerClient(url=server)
    index = client.get_model_repository_index()
    ready = {(m["name"], m["version"]) for m in index if m["state"] == "READY"}
    assert {("churn", "1"), ("churn", "2"), ("ltv", "1"), ("propensity", "2")} <= ready


def test_unknown_model_and_bad_shape_are_precise_errors(server):
    client = triton.InferenceServerClient(url=server)
    inp = triton.InferInput("features", [1, 12], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 12), dtype=np.float32))
    with pytest.raises(triton.InferenceServerException) as err:
        client.infer("nope", [inp])
    assert err.value.status() == "404"
    assert "`nope` not found" in err.value.message()
    bad = triton.InferInput("features", [1, 11], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 11), dtype=np.float32))
    with pytest.raises(triton.InferenceServerException) as err:
        client.infer("churn", [bad])
    assert err.value.status() == "400"
