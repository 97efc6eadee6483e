# fleetsim's container image: the binary and the shipped scenarios, device profiles and firmware
# models, run as an unprivileged user. Used by deploy/kubernetes (docs/deploy.md).
#
#   docker build -t fleetsim:dev .
#   docker run --rm fleetsim:dev                       # the built-in demo, headless
#   docker run --rm fleetsim:dev run scenarios/ingest-load.toml --broker mqtt://HOST:1883 --headless
#
# Two stages: Rust's official bookworm image builds a release binary from Cargo.lock as it is
# (--locked); Debian bookworm-slim runs it (the same glibc as the builder). The binary links only
# glibc and libgcc (TLS is rustls with ring, no OpenSSL); ca-certificates gives `mqtts://` the
# system's trust store when no --ca-file is given.

# The toolchain the workspace asks for (Cargo.toml: rust-version = "1.95", edition 2024).
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# The whole workspace (.dockerignore leaves out target/, .git, fuzz/, docs and scripts): the
# binary includes the demo's scenario, profiles and firmware models at compile time.
COPY . .
# Cache mounts (BuildKit) keep the crate registry and the build between builds; the binary is
# copied out of the cached target/ before the mount goes away.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --package fleetsim --bin fleetsim \
    && install -D -m 0755 target/release/fleetsim /out/fleetsim

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it and runAsUser/fsGroup
# (deploy/kubernetes/base/job.yaml: 10001) match it.
RUN groupadd --gid 10001 fleetsim \
    && useradd --uid 10001 --gid 10001 --home-dir /opt/fleetsim --no-create-home \
       --shell /usr/sbin/nologin fleetsim
COPY --from=builder /out/fleetsim /usr/local/bin/fleetsim
# The shipped files, laid out as in the repository, so paths in scenarios resolve as they do
# there: a scenario in /opt/fleetsim/<folder>/ names ../device-profiles/x.toml, and a profile
# names ../firmware-models/y.toml. Kubernetes mounts its scenario at /opt/fleetsim/cluster/.
# Owned by root and read-only for fleetsim: the root file system can be mounted read-only.
COPY scenarios/ /opt/fleetsim/scenarios/
COPY device-profiles/ /opt/fleetsim/device-profiles/
COPY firmware-models/ /opt/fleetsim/firmware-models/
WORKDIR /opt/fleetsim
USER 10001:10001
# The control API and /metrics when run with --api-listen 0.0.0.0:9464.
EXPOSE 9464
ENTRYPOINT ["fleetsim"]
CMD ["run", "--headless", "--run-dir", "/tmp/fleetsim-run"]
