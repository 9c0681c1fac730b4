# syntax=docker/dockerfile:1
# The Tether controller image: built with the pinned Rust toolchain, run from a distroless
# base (glibc and CA certificates only: no shell, no package manager) as a non-root user.
#
#   docker build -t tether:0.1.0 .
#   docker run --rm tether:0.1.0 --help

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ between builds; the binary is copied out of
# the cached target/ because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tether \
    && install -m 0755 target/release/tether /tether

# TLS is rustls with ring (no OpenSSL), so the cc base (glibc, libgcc, CA certificates) is all
# the binary needs. The :nonroot tag runs as uid/gid 65532, the ids the Helm chart sets.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /tether /tether
USER 65532:65532
# Metrics, /healthz and /readyz (--metrics-addr).
EXPOSE 8080
ENTRYPOINT ["/tether"]
CMD ["controller"]
