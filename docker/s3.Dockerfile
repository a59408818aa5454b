# syntax=docker/dockerfile:1
# An S3-compatible server for the compose stack: s3s-fs 0.14.1 from crates.io, the
# server effp's tests run against. Each folder under /data is a bucket; the image
# holds the empty bucket `effp`, copied into a new named volume on first start.
#
#   docker build -f docker/s3.Dockerfile -t effp/s3s-fs:0.14.1 docker

FROM rust:1.95.0-bookworm AS build
RUN cargo install --locked s3s-fs@0.14.1 --features binary --root /out

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="s3s-fs" \
      org.opencontainers.image.description="s3s-fs 0.14.1: an S3-compatible server over a folder" \
      org.opencontainers.image.version="0.14.1"
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin s3 \
    && install -d -o s3 -g s3 /data /data/effp
COPY --from=build /out/bin/s3s-fs /usr/local/bin/s3s-fs
USER 10001:10001
EXPOSE 8014
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8014"]
ENTRYPOINT ["/usr/local/bin/s3s-fs", "--host", "0.0.0.0", "--port", "8014"]
CMD ["/data"]
