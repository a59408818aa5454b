# syntax=docker/dockerfile:1
# The worker image: `effp worker`, which runs jobs from the shared queue (Redis) and
# stores through S3. It carries libtorch and the CUDA libraries of the pinned torch
# wheel (torch==2.11.0 from PyPI), so the same image trains on a GPU where the
# NVIDIA container toolkit exposes one and on the CPU elsewhere.
#
#   docker build -f docker/worker.Dockerfile -t effp/worker:0.1.0 .

FROM rust:1.95.0-bookworm AS build
# Symbols stay for backtraces; the debug info (most of the binary) does not ship.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv=3.11.2-1+b1 \
    && rm -rf /var/lib/apt/lists/*
# libtorch from the wheel, at the path the binary's rpath will name.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir torch==2.11.0
ENV LIBTORCH=/opt/venv/lib/python3.11/site-packages/torch
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin effp \
    && install -D -m 0755 target/release/effp /out/effp

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="effp-worker" \
      org.opencontainers.image.description="effp job worker: effp worker (libtorch, CUDA)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
# tini is PID 1: it forwards SIGTERM to effp (which checkpoints the running job and
# hands it back to the queue) and reaps the job processes effp starts.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 ca-certificates=20230311+deb12u1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin effp \
    && install -d -o effp -g effp /var/lib/effp
# Only the shared libraries: torch's own and the NVIDIA ones its RUNPATH names
# relative to it ($ORIGIN/../../nvidia/...). The binary's rpath is the lib folder.
COPY --from=build /opt/venv/lib/python3.11/site-packages/torch/lib /opt/venv/lib/python3.11/site-packages/torch/lib
COPY --from=build /opt/venv/lib/python3.11/site-packages/nvidia /opt/venv/lib/python3.11/site-packages/nvidia
COPY --from=build /out/effp /usr/local/bin/effp
ENV EFFP_DATA_DIR=/var/lib/effp \
    EFFP_WORKER_METRICS_LISTEN=0.0.0.0:9464 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /var/lib/effp
USER 10001:10001
EXPOSE 9464
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/effp", "health", "http://127.0.0.1:9464/healthz"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/effp"]
CMD ["worker"]
