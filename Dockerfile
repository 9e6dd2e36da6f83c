# presence-server in a small image: build with the pinned toolchain, run as a non-root user.
#   docker build -t presence-server .
#   one node, state in a volume:
#     docker run -p 4000:4000 -e PRESENCE_JWT_SECRET=... -v presence-data:/data presence-server
#   a cluster node (the arguments replace the default `--data-dir /data`):
#     docker run -p 4000:4000 -e PRESENCE_JWT_SECRET=... presence-server \
#       --redis-cluster 10.0.0.1:6379,10.0.0.2:6379 --node-id node-1
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# BuildKit caches: the registry and the target directory outlive a source change, so a rebuild
# compiles only the crates that changed.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p presence-server \
    && cp target/release/presence-server /presence-server

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data presence \
    && mkdir -p /data && chown presence /data
COPY --from=build /presence-server /usr/local/bin/presence-server
USER presence
ENV PRESENCE_BIND=0.0.0.0:4000 \
    PRESENCE_LOG_FORMAT=json
EXPOSE 4000
VOLUME ["/data"]
# The binary answers its own health check: no curl in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
    CMD ["presence-server", "--healthcheck"]
ENTRYPOINT ["presence-server"]
CMD ["--data-dir", "/data"]
