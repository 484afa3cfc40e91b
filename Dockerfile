# syntax=docker/dockerfile:1
# tally: one image with the five programs (tally-rate, tally-aggregate,
# tally-stripe, tally-alerts, tally-relay), the CLI `tally` and the
# migrations. Build: docker build -t tally .   Run one program:
#   docker run --env-file tally-stripe.env -v ./tally.cfg:/etc/tally/tally.cfg:ro \
#     -e TALLY_HEALTH_PORT=9403 tally tally-stripe --config /etc/tally/tally.cfg
# No secret is baked in: STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET and
# DATABASE_URL come from the environment at run time (ops/tally.cfg.example).

FROM debian:bookworm-slim AS build
# ops/install-deps installs ops/debian-packages.txt and builds librdkafka
# 2.12.1 into /opt/tally-deps (the runtime stage copies that prefix).
# libsystemd-dev: sd_notify (a no-op in a container, but the same build
# as on hosts with the systemd units). Versions are the distribution's
# (bookworm and its security updates), not pinned one by one: a pin would
# break at the next point release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends bash ca-certificates curl \
        libsystemd-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY ops/install-deps ops/debian-packages.txt ./ops/
RUN ./ops/install-deps && rm -rf /var/lib/apt/lists/* /var/cache/tally
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_INSTALL_PREFIX=/usr/local \
 && ninja -C build tally-cli tally-rate tally-aggregate tally-stripe \
        tally-alerts tally-relay \
 && cmake --install build --prefix /stage/usr/local

FROM debian:bookworm-slim AS runtime
# runtime libraries only (no compilers, no -dev packages): what the
# programs and librdkafka link (readelf -d: NEEDED), curl for the
# HEALTHCHECK; the librdkafka the programs were linked with (RPATH).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
        libpq5 libconfig9 libjansson4 libcurl4 \
        libmicrohttpd12 libssl3 libuuid1 libsystemd0 \
        libsasl2-2 libzstd1 liblz4-1 zlib1g libjemalloc2 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tally \
 && useradd --system --uid 10001 --gid tally --home-dir /nonexistent \
        --no-create-home --shell /usr/sbin/nologin tally
COPY --from=build /opt/tally-deps /opt/tally-deps
COPY --from=build /stage/usr/local/bin/ /usr/local/bin/
COPY --from=build /stage/usr/local/share/tally/migrations/ /usr/local/share/tally/migrations/
COPY ops/tally.cfg.example /etc/tally/tally.cfg.example
ENV TALLY_MIGRATIONS_DIR=/usr/local/share/tally/migrations \
    TALLY_HEALTH_PORT=9401
USER 10001:10001
# each program serves /healthz on its metrics port (tally-relay: its
# admin listener); set TALLY_HEALTH_PORT to it
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS \"http://127.0.0.1:${TALLY_HEALTH_PORT}/healthz\" || exit 1"]
EXPOSE 8088 9401 9402 9403 9404 9405
CMD ["tally", "--help"]
