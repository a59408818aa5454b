# syntax=docker/dockerfile:1
# The benchmark agent image: effp-agent, which claims device benchmarks from the API,
# measures the original and the pruned model and reports their latency.
#
# On a Jetson (linux/arm64) it is the cross-built binary on Ubuntu 20.04, the
# userland of L4T r35 / JetPack 5.1, with the host's TensorRT: `--runtime nvidia`
# mounts JetPack's TensorRT libraries and /usr/src/tensorrt/bin is mounted read-only
# for trtexec. The agent measures with the TensorRT the device deploys with, and the
# image stays small; an L4T TensorRT base image would pin one TensorRT into the image
# (several GB, and it must match the host's JetPack anyway). On x86-64 (linux/amd64)
# the same image runs the CPU runner, e.g. as compose's CPU agent.
#
#   docker buildx build --platform linux/arm64 -f docker/agent.Dockerfile -t effp/agent:0.1.0 .
#   docker run --runtime nvidia -v /usr/src/tensorrt:/usr/src/tensorrt:ro \
#     -e EFFP_AGENT_SERVER=https://effp.example -e EFFP_AGENT_KEY=... \
#     -e EFFP_AGENT_DEVICE=jetson-xavier-nx effp/agent:0.1.0

FROM --platform=$BUILDPLATFORM rust:1.95.0-bookworm AS build
# Symbols stay for backtraces; the debug info (most of the binary) does not ship.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv=3.11.2-1+b1 \
    && rm -rf /var/lib/apt/lists/*
# zig links against glibc 2.31 (Ubuntu 20.04, L4T r35) whatever the build host has.
RUN python3 -m venv /opt/zig \
    && /opt/zig/bin/pip install --no-cache-dir ziglang==0.17.0 \
    && cargo install --locked cargo-zigbuild@0.24.1
ARG TARGETARCH
WORKDIR /src
COPY . .
RUN case "$TARGETARCH" in \
      arm64) target=aarch64-unknown-linux-gnu ;; \
      amd64) target=x86_64-unknown-linux-gnu ;; \
      *) echo "effp-agent images are built for arm64 (Jetson) and amd64, not $TARGETARCH" >&2; exit 1 ;; \
    esac \
    && rustup target add "$target" \
    && PATH="/opt/zig/bin:$PATH" cargo zigbuild --release --locked -p effp-agent --target "$target.2.31" \
    && install -D -m 0755 "target/$target/release/effp-agent" /out/effp-agent \
    && mkdir -p /out/work

FROM ubuntu:20.04
LABEL org.opencontainers.image.title="effp-agent" \
      org.opencontainers.image.description="effp device benchmark agent (trtexec on Jetson, CPU runner elsewhere)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/effp-agent /usr/local/bin/effp-agent
COPY --from=build --chown=10001:10001 /out/work /var/lib/effp-agent
ENV EFFP_AGENT_WORK_DIR=/var/lib/effp-agent \
    EFFP_AGENT_TRTEXEC=/usr/src/tensorrt/bin/trtexec
WORKDIR /var/lib/effp-agent
USER 10001:10001
STOPSIGNAL SIGTERM
# The agent serves nothing; it is alive while it runs, and says why it stops.
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/effp-agent"]
