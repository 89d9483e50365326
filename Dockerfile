# segscore container image: the release binary, the libonnxruntime.so of the
# same PyPI onnxruntime wheel the project pins, and the shipped models/, run as
# a non-root user.
#
#   docker build -t segscore:0.1.0 .
#   docker run --rm -p 50051:50051 segscore:0.1.0
#
# Needs BuildKit (Docker's default builder since 23.0) for the cache mounts.
# Everything comes from the package registries: crates.io (cargo), PyPI (the
# onnxruntime wheel) and Debian (the base images' packages).
# `make deploy-check` (deploy/validate.py) checks this file against
# training/requirements.txt, the binary's --help and the manifests in deploy/.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
ARG PYTHON_VERSION=3.11
# Must equal the onnxruntime pin in training/requirements.txt: ort's `api-31`
# feature needs ONNX Runtime >= 1.31, and the server is tested against that
# wheel. The `ort` stage refuses to build when the two differ.
ARG ORT_VERSION=1.31.1

# --- build the binary -------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# Only what `cargo build` reads (build.rs compiles proto/ with protox, so no
# system protoc is needed; ort is load-dynamic, so nothing is linked from ONNX
# Runtime at build time).
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
# target/ lives in a cache mount, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
    && install -D -m 0755 target/release/segscore /out/segscore

# --- libonnxruntime.so from the pinned PyPI wheel ----------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS ort
ARG ORT_VERSION
COPY training/requirements.txt /tmp/requirements.txt
RUN grep -Eq "^onnxruntime==${ORT_VERSION}([[:space:]]|$)" /tmp/requirements.txt \
    || { echo "ORT_VERSION=${ORT_VERSION} is not the onnxruntime pin in training/requirements.txt" >&2; exit 1; }
# --no-deps: only the wheel's own files are wanted; the shared library inside
# (site-packages/onnxruntime/capi/libonnxruntime.so.X.Y.Z, SONAME
# libonnxruntime.so.1, RUNPATH $ORIGIN) needs nothing but libc and libstdc++.
RUN pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
        --no-deps --only-binary=:all: --target /tmp/ort "onnxruntime==${ORT_VERSION}" \
    && mkdir -p /opt/onnxruntime/lib \
    && cp -a /tmp/ort/onnxruntime/capi/libonnxruntime.so* /opt/onnxruntime/lib/ \
    && test -f "/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION}"

# --- runtime ----------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG ORT_VERSION
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it and
# fsGroup can give it the model volume (deploy/k8s/deployment.yaml uses 10001).
RUN groupadd --system --gid 10001 segscore \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin segscore
COPY --from=ort /opt/onnxruntime/lib/ /opt/onnxruntime/lib/
COPY --from=builder /out/segscore /usr/local/bin/segscore
# The shipped model repository. In Kubernetes a volume is mounted over /models;
# the Deployment's init container seeds that volume from this copy.
COPY models /models
# The server loads ONNX Runtime from here (there is no .venv in the image).
# RUST_LOG is left unset: segscore's default filter (info, ort=warn) keeps ONNX
# Runtime's per-session chatter out of the logs.
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION}
# The slim image already has libstdc++6 and libgcc-s1 (apt needs them): fail
# the build, not the pod, if ONNX Runtime's dependencies ever go missing
# (prints the unresolved libraries).
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN ldd "${ORT_DYLIB_PATH}" | (! grep "not found")
USER 10001:10001
# Smoke test as the runtime user: loads ONNX Runtime through ORT_DYLIB_PATH and
# runs every shipped version through the server's validation gate (a generous
# latency budget, so slow or emulated builders do not fail it).
RUN ["segscore", "models", "validate", "/models", "--workers", "1", "--latency-budget-ms", "10000"]
EXPOSE 50051 8080
ENTRYPOINT ["segscore"]
CMD ["serve", "--model-repository", "/models", "--addr", "0.0.0.0:50051", "--http-addr", "0.0.0.0:8080"]
