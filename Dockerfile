# modeltree container image: a multi-stage build, a non-root runtime, the database on a volume.
# Build: docker build -t modeltree .   Run: docker run --rm -v modeltree-data:/data modeltree scan /models
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
ENV MODELTREE_DB=/data/modeltree.db
VOLUME ["/data"]
HEALTHCHECK --interval=60s --timeout=10s CMD ["modeltree", "--version"]
ENTRYPOINT ["modeltree"]
CMD ["demo"]
