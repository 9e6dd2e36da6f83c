# presence-server in a small image: build with the pinned toolchain, run as a non-root user.
#   docker build -t presence-server .
#   docker run -p 4000:4000 -e PRESENCE_JWT_SECRET=... -v presence-data:/data presence-server
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p presence-server \
    && cp target/release/presence-server /presence-server

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data presence \
    && mkdir -p /data && chown presence /data
COPY --from=build /presence-server /usr/local/bin/presence-server
USER presence
ENV PRESENCE_BIND=0.0.0.0:4000 \
    PRESENCE_DATA_DIR=/data \
    PRESENCE_LOG_FORMAT=json
EXPOSE 4000
VOLUME ["/data"]
# The binary answers its own health check: no curl in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
    CMD ["presence-server", "--healthcheck"]
ENTRYPOINT ["presence-server"]
