# mqtt-dynamo's container image: the binary built in the Rust image, run in a minimal glibc image
# as a non-root user.
#
#   docker build -t mqtt-dynamo:0.1.0 .
#   docker run --rm --stop-timeout 30 -p 9000:9000 -p 8080:8080 -p 8095:8095 mqtt-dynamo:0.1.0
#
# The build context is the repository root; .dockerignore keeps target/, .git and node_modules out.
# `docker stop` waits 10 s before SIGKILL unless told otherwise: give it more than
# [pipeline] shutdown_timeout (25 s) with --stop-timeout (compose: stop_grace_period), or the
# drain is cut short. deploy/README.md has the rest.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# Cargo resolves the whole workspace even to build one binary, so the other members (loadgen,
# simulator) and the [[bench]] files the manifest names come along; tests/ is not needed.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY benches ./benches
COPY loadgen ./loadgen
COPY simulator ./simulator
# protoc comes from the protoc-bin-vendored crate and SQLite is compiled from source (the
# embedded DynamoDB), so the image's gcc is all the build needs beyond crates.io.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mqtt-dynamo \
 && install -D -m 0755 target/release/mqtt-dynamo /out/bin/mqtt-dynamo \
 && install -d -m 0750 /out/state/mqtt-dynamo/spool

FROM ${RUNTIME_IMAGE}
COPY --from=builder /out/bin/mqtt-dynamo /usr/local/bin/mqtt-dynamo
# The state directory and the spool inside it, owned by the runtime user (distroless' nonroot,
# 65532), so a fresh named volume mounted there starts writable.
COPY --from=builder --chown=65532:65532 /out/state/ /var/lib/
# Listeners on every interface (the defaults are loopback only) and the spool on the volume.
# These variables override the configuration file: change them here, with `docker run -e`, or in
# the pod's env, not in the TOML.
ENV MQTT_DYNAMO_EXHOOK_LISTEN=0.0.0.0:9000 \
    MQTT_DYNAMO_HTTP_LISTEN=0.0.0.0:8080 \
    MQTT_DYNAMO_METRICS_LISTEN=0.0.0.0:8095 \
    MQTT_DYNAMO_PIPELINE_SPOOL_ENABLED=true \
    MQTT_DYNAMO_PIPELINE_SPOOL_DIR=/var/lib/mqtt-dynamo/spool
USER 65532:65532
# ExHook gRPC, HTTP ingest and lookups, metrics/health. The embedded DynamoDB (8000) listens on
# the container's loopback only and is not exposed.
EXPOSE 9000 8080 8095
VOLUME ["/var/lib/mqtt-dynamo/spool"]
STOPSIGNAL SIGTERM
# No curl in the image: the binary checks its own /healthz (3 s connect, 3 s answer).
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/mqtt-dynamo", "health", "http://127.0.0.1:8095/healthz"]
ENTRYPOINT ["/usr/local/bin/mqtt-dynamo"]
CMD ["serve"]
