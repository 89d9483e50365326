"""Tests for deploy/validate.py: the real files pass, and each kind of mistake
it exists to catch, made on a copy, is reported."""

from __future__ import annotations

import json
import shutil
import stat
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from referencing import Resource

import validate

REPO = Path(__file__).resolve().parent.parent


def errors_of(root: Path, binary: Path | None = None) -> list[str]:
    return validate.validate(root, binary).errors


def test_the_real_files_pass():
    report = validate.validate(REPO, validate.default_binary(REPO))
    # Notes (no binary to check flags against, planned flags) show in pytest's
    # warnings summary.
    for note in report.notes:
        warnings.warn(note, UserWarning, stacklevel=1)
    assert report.errors == []


def test_main_exits_zero_on_the_real_files(capsys):
    assert validate.main(["--root", str(REPO)]) == 0
    assert "consistent" in capsys.readouterr().out


# --------------------------------------------------------------------------
# A copy of everything the validator reads, to break.


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("Dockerfile", ".dockerignore", "Cargo.toml", "Cargo.lock", "build.rs"):
        shutil.copy(REPO / name, root / name)
    (root / "training").mkdir()
    shutil.copy(REPO / "training/requirements.txt", root / "training/requirements.txt")
    # Only their existence matters (the Dockerfile copies them).
    for name in ("src", "proto", "models"):
        (root / name).symlink_to(REPO / name, target_is_directory=True)
    shutil.copytree(REPO / "deploy", root / "deploy", ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    return root


def edit_yaml(path: Path, change) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    change(docs[0])
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def edit_text(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def serving_container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def assert_reported(errors: list[str], *fragments: str) -> None:
    assert any(all(f in e for f in fragments) for e in errors), (
        f"no error mentioning {fragments}; got:\n" + "\n".join(errors)
    )


def test_the_copy_passes(repo):
    assert errors_of(repo) == []


# --- Kubernetes schemas (kubernetes-validate, strict) -----------------------


def test_unknown_field_in_a_container_is_reported(repo):
    edit_yaml(repo / "deploy/k8s/deployment.yaml", lambda d: serving_container(d).update(readinesProbe={}))
    errors = errors_of(repo)
    for version in validate.KUBERNETES_VERSIONS:
        assert_reported(errors, "deployment.yaml", f"Kubernetes {version}", "readinesProbe")


def test_unknown_field_in_a_probe_is_reported(repo):
    edit_yaml(
        repo / "deploy/k8s/deployment.yaml",
        lambda d: serving_container(d)["readinessProbe"]["grpc"].update(servce="churn"),
    )
    assert_reported(errors_of(repo), "deployment.yaml", "servce")


def test_wrong_type_is_reported(repo):
    edit_yaml(repo / "deploy/k8s/hpa.yaml", lambda d: d["spec"].update(minReplicas="two"))
    assert_reported(errors_of(repo), "hpa.yaml", "minReplicas")


def test_unknown_kind_is_reported(repo):
    (repo / "deploy/k8s/extra.yaml").write_text("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n")
    errors = errors_of(repo)
    assert_reported(errors, "extra.yaml", "Widget")
    assert_reported(errors, "kustomization.yaml", "extra.yaml")


# --- ports and probes --------------------------------------------------------


def test_wrong_probe_port_is_reported(repo):
    edit_yaml(
        repo / "deploy/k8s/deployment.yaml",
        lambda d: serving_container(d)["readinessProbe"]["grpc"].update(port=50052),
    )
    assert_reported(errors_of(repo), "readinessProbe.grpc.port", "50052")


def test_http_probe_instead_of_grpc_is_reported(repo):
    def change(d):
        serving_container(d)["livenessProbe"] = {"tcpSocket": {"port": 50051}}

    edit_yaml(repo / "deploy/k8s/deployment.yaml", change)
    assert_reported(errors_of(repo), "livenessProbe", "native grpc probe")


def test_probe_on_a_model_service_is_reported(repo):
    edit_yaml(
        repo / "deploy/k8s/deployment.yaml",
        lambda d: serving_container(d)["livenessProbe"]["grpc"].update(service="churn"),
    )
    assert_reported(errors_of(repo), "livenessProbe.grpc.service")


def test_wrong_addr_port_is_reported(repo):
    edit_text(repo / "deploy/k8s/deployment.yaml", "0.0.0.0:50051", "0.0.0.0:8080")
    assert_reported(errors_of(repo), "deployment.yaml", "--addr 0.0.0.0:8080")


def test_wrong_container_port_is_reported(repo):
    edit_yaml(
        repo / "deploy/k8s/deployment.yaml",
        lambda d: serving_container(d)["ports"][0].update(containerPort=8080),
    )
    errors = errors_of(repo)
    assert_reported(errors, "deployment.yaml", "containerPort 50051 not declared")


def test_service_target_port_is_checked(repo):
    edit_yaml(repo / "deploy/k8s/service.yaml", lambda d: d["spec"]["ports"][0].update(targetPort="http"))
    assert_reported(errors_of(repo), "service.yaml", "targetPort")


def test_service_selector_is_checked(repo):
    edit_yaml(repo / "deploy/k8s/service.yaml", lambda d: d["spec"].update(selector={"app": "other"}))
    assert_reported(errors_of(repo), "service.yaml", "selector")


def test_dockerfile_expose_is_checked(repo):
    edit_text(repo / "Dockerfile", "EXPOSE 50051 8080", "EXPOSE 8080")
    assert_reported(errors_of(repo), "Dockerfile", "EXPOSE 8080", "listens on 50051 8080")


def test_kserve_port_is_checked(repo):
    edit_text(repo / "deploy/kserve/servingruntime.yaml", "containerPort: 50051", "containerPort: 8080")
    assert_reported(errors_of(repo), "servingruntime.yaml", "h2c")


def test_service_without_the_metrics_port_is_reported(repo):
    edit_yaml(
        repo / "deploy/k8s/service.yaml",
        lambda d: d["spec"].update(ports=[p for p in d["spec"]["ports"] if p["name"] != "metrics"]),
    )
    assert_reported(errors_of(repo), "service.yaml", "no port named metrics")


def test_service_scrape_annotation_must_name_the_metrics_port(repo):
    edit_yaml(repo / "deploy/k8s/service.yaml", lambda d: d["metadata"]["annotations"].update({"prometheus.io/port": "9091"}))
    assert_reported(errors_of(repo), "service.yaml", "prometheus.io/port", "9090")


def test_service_http_port_must_reach_the_http_listener(repo):
    def change(d):
        for p in d["spec"]["ports"]:
            if p["name"] == "http":
                p["targetPort"] = "grpc"

    edit_yaml(repo / "deploy/k8s/service.yaml", change)
    assert_reported(errors_of(repo), "service.yaml", "port http", "8080")


def test_http_addr_on_loopback_is_reported(repo):
    edit_text(repo / "deploy/k8s/deployment.yaml", "0.0.0.0:8080", "127.0.0.1:8080")
    assert_reported(errors_of(repo), "deployment.yaml", "--http-addr 127.0.0.1:8080", "loopback")


def test_service_monitor_is_checked_against_its_schema(repo):
    edit_yaml(repo / "deploy/k8s/servicemonitor.yaml", lambda d: d["spec"]["endpoints"][0].update(intervall="15s"))
    assert_reported(errors_of(repo), "servicemonitor.yaml", "intervall")


def test_service_monitor_port_must_be_on_the_service(repo):
    edit_yaml(repo / "deploy/k8s/servicemonitor.yaml", lambda d: d["spec"]["endpoints"][0].update(port="web"))
    assert_reported(errors_of(repo), "servicemonitor.yaml", "'web'")


def test_service_monitor_selector_must_select_the_service(repo):
    edit_yaml(repo / "deploy/k8s/servicemonitor.yaml", lambda d: d["spec"]["selector"].update(matchLabels={"app": "x"}))
    assert_reported(errors_of(repo), "servicemonitor.yaml", "matches 0 Services")


def edit_rest_runtime(repo: Path, change) -> None:
    path = repo / "deploy/kserve/servingruntime.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    (rest,) = [d for d in docs if d["metadata"]["name"] == "segscore-rest"]
    change(rest)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def test_rest_runtime_probe_paths_are_checked(repo):
    edit_rest_runtime(
        repo, lambda d: d["spec"]["containers"][0]["readinessProbe"]["httpGet"].update(path="/v2/health/live")
    )
    assert_reported(errors_of(repo), "servingruntime.yaml", "readinessProbe.httpGet.path", "/v2/health/ready")


def test_rest_runtime_needs_its_http1_port(repo):
    edit_rest_runtime(repo, lambda d: d["spec"]["containers"][0]["ports"][0].update(name="http"))
    assert_reported(errors_of(repo), "servingruntime.yaml", "http1")


def test_a_runtime_with_two_ports_is_reported(repo):
    edit_rest_runtime(
        repo, lambda d: d["spec"]["containers"][0]["ports"].append({"name": "h2c", "containerPort": 50051})
    )
    assert_reported(errors_of(repo), "servingruntime.yaml", "exactly one container port")


def test_a_runtime_with_both_protocols_is_reported(repo):
    edit_yaml(repo / "deploy/kserve/servingruntime.yaml", lambda d: d["spec"].update(protocolVersions=["grpc-v2", "v2"]))
    assert_reported(errors_of(repo), "servingruntime.yaml", "exactly one of grpc-v2")


def test_runtime_scrape_annotations_are_checked(repo):
    edit_yaml(repo / "deploy/kserve/servingruntime.yaml", lambda d: d["spec"]["annotations"].pop("prometheus.kserve.io/port"))
    assert_reported(errors_of(repo), "servingruntime.yaml", "prometheus.kserve.io/port")


def test_inference_service_must_enable_scraping(repo):
    edit_yaml(repo / "deploy/kserve/inferenceservice.yaml", lambda d: d["metadata"].pop("annotations"))
    assert_reported(errors_of(repo), "inferenceservice.yaml", "enable-prometheus-scraping")


# --- the ONNX Runtime wheel ------------------------------------------------


def test_mismatched_wheel_version_in_dockerfile_is_reported(repo):
    edit_text(repo / "Dockerfile", "ARG ORT_VERSION=1.31.1", "ARG ORT_VERSION=1.30.0")
    errors = errors_of(repo)
    assert_reported(errors, "Dockerfile", "ORT_VERSION=1.30.0", "onnxruntime==1.31.1")


def test_changed_requirements_pin_is_reported(repo):
    edit_text(repo / "training/requirements.txt", "onnxruntime==1.31.1", "onnxruntime==1.32.0")
    assert_reported(errors_of(repo), "Dockerfile", "onnxruntime==1.32.0")


def test_dylib_path_of_another_version_is_reported(repo):
    edit_text(
        repo / "Dockerfile",
        "ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION}",
        "ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.1.30.0",
    )
    assert_reported(errors_of(repo), "Dockerfile", "ORT_DYLIB_PATH")


# --- Dockerfile and its context ----------------------------------------------


def test_root_user_is_reported(repo):
    edit_text(repo / "Dockerfile", "USER 10001:10001", "USER root")
    assert_reported(errors_of(repo), "Dockerfile", "USER root")


def test_dockerignore_excluding_a_copied_path_is_reported(repo):
    edit_text(repo / ".dockerignore", "!models\n", "")
    assert_reported(errors_of(repo), ".dockerignore", "models")


def test_hadolint_findings_are_reported(repo):
    edit_text(repo / "Dockerfile", "EXPOSE 50051", "RUN cd /tmp && ls\nEXPOSE 50051")
    assert_reported(errors_of(repo), "hadolint", "DL3003")


def test_runtime_user_must_match_run_as_user(repo):
    edit_yaml(
        repo / "deploy/k8s/deployment.yaml",
        lambda d: d["spec"]["template"]["spec"]["securityContext"].update(runAsUser=1000),
    )
    assert_reported(errors_of(repo), "deployment.yaml", "runAsUser 1000")


def test_writable_root_filesystem_is_reported(repo):
    edit_yaml(
        repo / "deploy/k8s/deployment.yaml",
        lambda d: serving_container(d)["securityContext"].update(readOnlyRootFilesystem=False),
    )
    assert_reported(errors_of(repo), "deployment.yaml", "readOnlyRootFilesystem")


# --- shutdown, images, Job, kustomization, claims ---------------------------


def test_grace_period_shorter_than_the_drain_is_reported(repo):
    edit_yaml(
        repo / "deploy/k8s/deployment.yaml",
        lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=30),
    )
    assert_reported(errors_of(repo), "terminationGracePeriodSeconds 30")


def test_mismatched_image_is_reported(repo):
    edit_text(repo / "deploy/k8s/bulk-score-job.yaml", "image: segscore:0.1.0", "image: segscore:0.2.0")
    assert_reported(errors_of(repo), "same image", "segscore:0.2.0")


def test_image_tag_must_be_the_crate_version(repo):
    for path in [*(repo / "deploy/k8s").glob("*.yaml"), *(repo / "deploy/kserve").glob("*.yaml")]:
        path.write_text(path.read_text().replace("segscore:0.1.0", "segscore:latest"))
    assert_reported(errors_of(repo), "segscore:latest", "crate version")


def test_shards_must_equal_completions(repo):
    edit_yaml(repo / "deploy/k8s/bulk-score-job.yaml", lambda d: d["spec"].update(completions=6))
    assert_reported(errors_of(repo), "bulk-score-job.yaml", "spec.completions (6)")


def test_job_must_be_indexed(repo):
    edit_yaml(repo / "deploy/k8s/bulk-score-job.yaml", lambda d: d["spec"].update(completionMode="NonIndexed"))
    errors = errors_of(repo)
    assert_reported(errors, "bulk-score-job.yaml", "Indexed")


def test_job_shard_argument_is_checked(repo):
    edit_text(repo / "deploy/k8s/bulk-score-job.yaml", '--shard "${JOB_COMPLETION_INDEX}/${SHARDS}"', "--shard 0/8")
    assert_reported(errors_of(repo), "bulk-score-job.yaml", "--shard 0/8")


def test_kustomization_missing_a_manifest_is_reported(repo):
    edit_yaml(repo / "deploy/k8s/kustomization.yaml", lambda d: d["resources"].remove("pdb.yaml"))
    assert_reported(errors_of(repo), "kustomization.yaml", "pdb.yaml")


def test_unknown_claim_is_reported(repo):
    edit_text(repo / "deploy/k8s/deployment.yaml", "claimName: segscore-models", "claimName: models")
    assert_reported(errors_of(repo), "deployment.yaml", "claim models")


def test_hpa_min_replicas_against_the_pdb(repo):
    edit_yaml(repo / "deploy/k8s/hpa.yaml", lambda d: d["spec"].update(minReplicas=1))
    assert_reported(errors_of(repo), "hpa.yaml", "minReplicas 1")


# --- KServe (deploy/schemas) --------------------------------------------------


def test_kserve_unknown_spec_field_is_reported(repo):
    edit_yaml(repo / "deploy/kserve/servingruntime.yaml", lambda d: d["spec"].update(protocolVersion="grpc-v2"))
    assert_reported(errors_of(repo), "servingruntime.yaml", "protocolVersion")


def test_kserve_unknown_container_field_is_reported(repo):
    edit_yaml(repo / "deploy/kserve/servingruntime.yaml", lambda d: d["spec"]["containers"][0].update(arg=["x"]))
    assert_reported(errors_of(repo), "servingruntime.yaml", "spec.containers.0", "arg")


def test_kserve_unknown_model_field_is_reported(repo):
    edit_yaml(
        repo / "deploy/kserve/inferenceservice.yaml",
        lambda d: d["spec"]["predictor"]["model"].update(storageURI="pvc://segscore-models/"),
    )
    assert_reported(errors_of(repo), "inferenceservice.yaml", "storageURI")


def test_kserve_bad_protocol_is_reported(repo):
    edit_yaml(
        repo / "deploy/kserve/inferenceservice.yaml",
        lambda d: d["spec"]["predictor"]["model"].update(protocolVersion="grpc-v3"),
    )
    assert_reported(errors_of(repo), "inferenceservice.yaml", "grpc-v3")


def test_kserve_runtime_reference_is_checked(repo):
    edit_yaml(
        repo / "deploy/kserve/inferenceservice.yaml",
        lambda d: d["spec"]["predictor"]["model"].update(runtime="triton"),
    )
    assert_reported(errors_of(repo), "inferenceservice.yaml", "triton")


def test_kserve_storage_claim_is_checked(repo):
    edit_text(repo / "deploy/kserve/inferenceservice.yaml", "pvc://segscore-models/", "pvc://other-models/")
    assert_reported(errors_of(repo), "inferenceservice.yaml", "other-models")


def test_every_schema_reference_resolves():
    registry = validate.kserve_registry()
    for path in (REPO / "deploy/schemas").glob("*.json"):
        schema = json.loads(path.read_text())
        resolver = (Resource.from_contents(schema) @ registry).resolver(base_uri=schema["$id"])
        refs = []

        def walk(node):
            if isinstance(node, dict):
                if "$ref" in node:
                    refs.append(node["$ref"])
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(schema)
        assert refs, path
        for ref in refs:
            assert resolver.lookup(ref).contents is not None, f"{path.name}: {ref}"


def test_kubernetes_versions_are_bundled():
    for version in validate.KUBERNETES_VERSIONS:
        assert validate.k8s_definitions(version)["$defs"]


# --- flags and env vars against the binary's --help ---------------------------

HELP = {
    "serve": ["--model-repository", "--addr", "--workers", "--shutdown-timeout-secs", "--log-format", "--metrics-addr", "--http-addr"],
    "score": ["--input", "--output", "--model-repository", "--workers", "--log-format", "--shard", "--resume"],
    "models validate": ["--workers", "--latency-budget-ms", "--log-format"],
}
ENVS = {"serve": ["ORT_DYLIB_PATH"], "score": ["ORT_DYLIB_PATH"], "models validate": ["ORT_DYLIB_PATH"]}


def fake_binary(tmp_path: Path, extra: dict[str, list[str]] | None = None) -> Path:
    """A stand-in for target/release/segscore that prints clap-style --help."""
    cases = []
    for command, flags in HELP.items():
        flags = flags + (extra or {}).get(command, [])
        lines = [f"      {flag} <X>\\n          text [env: {env}=]" for flag, env in
                 zip(flags, ENVS[command] + [""] * len(flags))]
        body = "\\n".join(line.replace(" [env: =]", "") for line in lines)
        cases.append(f'  "{command} --help") printf "Usage: segscore {command}\\n\\nOptions:\\n{body}\\n" ;;')
    script = "#!/bin/sh\ncase \"$*\" in\n" + "\n".join(cases) + "\n  *) echo \"unexpected: $*\" >&2; exit 2 ;;\nesac\n"
    path = tmp_path / "segscore"
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_flags_are_checked_against_help(repo, tmp_path):
    binary = fake_binary(tmp_path)
    report = validate.validate(repo, binary)
    assert report.errors == []
    assert not any("--shard" in n for n in report.notes)


def test_unknown_flag_is_reported(repo, tmp_path):
    edit_text(repo / "deploy/k8s/deployment.yaml", "- --workers", "- --worker")
    binary = fake_binary(tmp_path)
    assert_reported(errors_of(repo, binary), "deployment.yaml", "no flag --worker")


def test_unknown_flag_in_the_job_script_is_reported(repo, tmp_path):
    edit_text(repo / "deploy/k8s/bulk-score-job.yaml", "--model-repository /models", "--model-repo /models")
    binary = fake_binary(tmp_path)
    assert_reported(errors_of(repo, binary), "bulk-score-job.yaml", "no flag --model-repo")


def test_unknown_env_var_is_reported(repo, tmp_path):
    def change(d):
        serving_container(d).setdefault("env", []).append({"name": "SEGSCORE_WORKER", "value": "2"})

    edit_yaml(repo / "deploy/k8s/deployment.yaml", change)
    binary = fake_binary(tmp_path)
    assert_reported(errors_of(repo, binary), "deployment.yaml", "SEGSCORE_WORKER")


def test_planned_flag_missing_from_the_binary_is_a_note(repo, tmp_path, monkeypatch):
    monkeypatch.setitem(validate.PLANNED_FLAGS, ("score", "--shard"), "`--shard K/N`")
    HELP_WITHOUT_SHARD = {**HELP, "score": [f for f in HELP["score"] if f != "--shard"]}
    monkeypatch.setattr(sys.modules[__name__], "HELP", HELP_WITHOUT_SHARD)
    report = validate.validate(repo, fake_binary(tmp_path))
    assert report.errors == []
    assert any("--shard" in n and "planned" in n for n in report.notes)


def test_shard_flag_missing_from_the_binary_is_an_error(repo, tmp_path, monkeypatch):
    HELP_WITHOUT_SHARD = {**HELP, "score": [f for f in HELP["score"] if f != "--shard"]}
    monkeypatch.setattr(sys.modules[__name__], "HELP", HELP_WITHOUT_SHARD)
    assert_reported(errors_of(repo, fake_binary(tmp_path)), "bulk-score-job.yaml", "no flag --shard")


def test_missing_binary_is_a_note(repo, tmp_path):
    report = validate.validate(repo, tmp_path / "nowhere/segscore")
    assert report.errors == []
    assert any("not found" in n for n in report.notes)


@pytest.mark.skipif(
    not validate.default_binary(REPO).is_file(), reason="no target/release/segscore (cargo build --release)"
)
def test_the_real_binary_rejects_an_unknown_flag(repo):
    edit_text(repo / "Dockerfile", '"--addr", "0.0.0.0:50051",', '"--addr", "0.0.0.0:50051", "--no-such-flag",')
    assert_reported(errors_of(repo, validate.default_binary(REPO)), "Dockerfile CMD", "--no-such-flag")


# --- the shell wrapper parser ---------------------------------------------------


def test_invocations_in_script():
    script = 'set -eu\nmkdir -p "$out"\nexec segscore score \\\n  --shard "${I}/${N}" \\\n  --input a.csv # comment\n'
    (inv,) = validate.invocations_in_script("x", script, {"N": "4"})
    assert inv.command == ("score",)
    assert inv.exec_used
    assert inv.value("--shard") == "${I}/${N}"
    assert inv.flags() == ["--shard", "--input"]
    (a, b) = validate.invocations_in_script("x", "segscore models validate /m --workers=1 && segscore serve", {})
    assert a.command == ("models", "validate") and a.value("--workers") == "1" and not a.exec_used
    assert b.command == ("serve",)


def test_a_port_nothing_listens_on_is_reported(repo):
    def change(d):
        serving_container(d)["ports"].append({"name": "debug", "containerPort": 9191})

    edit_yaml(repo / "deploy/k8s/deployment.yaml", change)
    assert_reported(errors_of(repo), "deployment.yaml", "containerPort 9191")
    # ...unless the server is told to listen there.
    def listen(d):
        args = serving_container(d)["args"]
        args[args.index("--metrics-addr") + 1] = "0.0.0.0:9191"
        serving_container(d)["ports"] = [p for p in serving_container(d)["ports"] if p["containerPort"] != 9090]

    edit_yaml(repo / "deploy/k8s/deployment.yaml", listen)
    assert not any("containerPort 9191" in e for e in errors_of(repo))


def test_unparsable_shell_wrapper_is_reported(repo):
    edit_text(repo / "deploy/k8s/bulk-score-job.yaml", '--input /data/in/customers.csv', '--input "/data/in/customers.csv')
    assert_reported(errors_of(repo), "bulk-score-job.yaml", "does not parse")
