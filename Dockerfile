# flowgate's container image: a static root filesystem with the binary, the libraries it loads,
# the CA bundle and an unprivileged user; no shell, no package manager.
#
#   docker build -t flowgate:0.1.0 --build-arg FLOWGATE_COMMIT="$(git rev-parse HEAD)" .
#   buildah bud  -t flowgate:0.1.0 --build-arg FLOWGATE_COMMIT="$(git rev-parse HEAD)" .
#
# Run it with the config and the policies mounted, read-only, and a read-only root filesystem:
#
#   docker run --read-only -p 7233:7233 -p 9233:9233 \
#     -v "$PWD/deploy/flowgate.toml:/etc/flowgate/flowgate.toml:ro" \
#     -v "$PWD/policies:/etc/flowgate/policies:ro" flowgate:0.1.0
#
# It runs as uid/gid 65532 and writes nothing but what its config names (decision records go
# to stdout with `audit.path = "-"`; `mint.key_dir` defaults to /var/lib/flowgate/keys: mount a
# Secret or a volume there).
#
# Two ways to fill it:
#   * the default target builds flowgate from this source tree in RUST_IMAGE (a Debian-based
#     Rust image: glibc, ca-certificates, ldd), the usual way;
#   * `--target prebuilt` takes a root filesystem that `deploy/image/rootfs.sh` laid out beside
#     a binary built elsewhere, from the build context's `image-rootfs/` (the test suite and the
#     release pipeline do this: the binary is built once, and no Rust image is pulled). The
#     binary must come from a glibc no newer than the one whose libraries rootfs.sh copies, which
#     holds when both are the same machine.

ARG RUST_IMAGE=rust:1.95-slim-bookworm

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# No `.git` in the context: the commit comes in as an argument (build.rs reads it).
ARG FLOWGATE_COMMIT=unknown
# Symbols stay (readable backtraces); debug info goes (the release profile keeps line tables).
RUN FLOWGATE_COMMIT="$FLOWGATE_COMMIT" CARGO_PROFILE_RELEASE_DEBUG=0 \
      cargo build --release --locked \
 && sh deploy/image/rootfs.sh target/release/flowgate /image-rootfs

# The image's settings, shared by both targets.
FROM scratch AS image
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
WORKDIR /var/lib/flowgate
# 7233: gRPC (clients, workers) and the token endpoint; 9233: /healthz, /readyz, /metrics.
EXPOSE 7233 9233
ENTRYPOINT ["/usr/local/bin/flowgate"]
CMD ["serve", "--config", "/etc/flowgate/flowgate.toml"]
LABEL org.opencontainers.image.title="flowgate" \
      org.opencontainers.image.description="identity-aware access gateway for Temporal" \
      org.opencontainers.image.licenses="Apache-2.0"

# Root owns everything but the working directory (generated signing keys, when `mint.key_dir`
# is not a mounted Secret).
FROM image AS prebuilt
COPY image-rootfs/ /
COPY --chown=65532:65532 image-rootfs/var/lib/flowgate/ /var/lib/flowgate/

FROM image AS runtime
COPY --from=build /image-rootfs/ /
COPY --from=build --chown=65532:65532 /image-rootfs/var/lib/flowgate/ /var/lib/flowgate/
