# modeltree container image: a multi-stage build, a non-root runtime, the database on a volume.
# Build: docker build -t modeltree .
# Daemon (the default): docker run -d --name modeltree -v modeltree-data:/data -e HF_TOKEN modeltree
#   Settings come from MODELTREE_… variables (see `modeltree config default`) or a mounted file:
#   -v ./modeltree.toml:/etc/modeltree.toml:ro modeltree --config /etc/modeltree.toml daemon
# One-shot commands: docker run --rm -v modeltree-data:/data modeltree runs
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin modeltree

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin modeltree \
    && mkdir -p /data && chown modeltree /data
COPY --from=build /src/target/release/modeltree /usr/local/bin/modeltree
USER modeltree
# The database, its lock file and the Hugging Face cache live on the volume.
ENV MODELTREE_DB=/data/modeltree.db \
    HF_HOME=/data/hf \
    MODELTREE_LOG_FORMAT=json \
    MODELTREE_STATUS_ADDR=127.0.0.1:9464 \
    MODELTREE_SHUTDOWN_DEADLINE=8s
VOLUME ["/data"]
# `docker stop` sends SIGTERM and waits 10 s before SIGKILL: the shutdown deadline above stays inside that.
STOPSIGNAL SIGTERM
# The status endpoint listens on the container's loopback, where the health check runs. To let Prometheus
# scrape it from outside, set MODELTREE_STATUS_ADDR=0.0.0.0:9464 and MODELTREE_ALLOW_NON_LOOPBACK_STATUS=true.
HEALTHCHECK --interval=60s --timeout=10s --start-period=30s CMD ["bash", "-c", \
    "exec 3<>/dev/tcp/127.0.0.1/9464 && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && grep -q '^ok' <&3"]
ENTRYPOINT ["modeltree"]
CMD ["daemon"]
