# syntax=docker/dockerfile:1
# The API image: `effp serve --no-worker`, an API replica of the distributed
# deployment (Redis + S3), from the build without libtorch. Distroless: no shell, no
# package manager, non-root; the health check is the binary's own `effp health`.
#
#   docker build -f docker/api.Dockerfile -t effp/api:0.1.0 .

FROM rust:1.95.0-bookworm AS build
# Symbols stay for backtraces; the debug info (most of the binary) does not ship.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
WORKDIR /src
COPY . .
# The API-only build (no `engine` feature) links no libtorch.
RUN cargo build --release --locked --no-default-features --bin effp \
    && install -D -m 0755 target/release/effp /out/effp \
    && mkdir -p /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="effp-api" \
      org.opencontainers.image.description="effp API replica: effp serve --no-worker (Redis + S3)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/effp /usr/local/bin/effp
ENV EFFP_LISTEN=0.0.0.0:8080 \
    EFFP_DATA_DIR=/var/lib/effp
# The scratch directory, owned by the runtime user (mount a volume there when the
# root filesystem is read-only).
COPY --from=build --chown=65532:65532 /out/data /var/lib/effp
WORKDIR /var/lib/effp
USER 65532:65532
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/effp", "health", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["/usr/local/bin/effp"]
CMD ["serve", "--no-worker"]
