# The gateway's container image: `portcullis run` and `portcullis ratelimit-service`
# (one binary) with the four filters in /usr/local/lib/portcullis/filters/, running as
# 65532 (nonroot), fit for a read-only root filesystem: it writes only its compiled
# module cache, $PORTCULLIS_CACHE_DIR (/var/cache/portcullis: mount a tmpfs or an
# emptyDir there). `cargo xtask oci` builds the same layout without a container engine
# (target/oci/portcullis); host/gateway/tests/images.rs keeps the two in step.
#
#   docker build -t portcullis .
#   docker run --read-only --tmpfs /var/cache/portcullis:uid=65532,gid=65532 \
#     -v "$PWD/portcullis.yaml:/etc/portcullis/portcullis.yaml:ro" -p 8080:8080 portcullis

# Debian 12 in both stages: the binary links the glibc it runs with.
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip1
WORKDIR /src
COPY . .
RUN cargo build --locked --profile host -p portcullis \
 && cargo build --locked --release --target wasm32-wasip1 \
      -p oidc -p jwt-auth -p tier-limiter -p header-forwarder -p key-auth \
 && mkdir -p /out/filters /out/cache \
 && cp target/host/portcullis /out/portcullis \
 && cp target/wasm32-wasip1/release/oidc.wasm target/wasm32-wasip1/release/jwt_auth.wasm \
       target/wasm32-wasip1/release/tier_limiter.wasm target/wasm32-wasip1/release/header_forwarder.wasm \
       target/wasm32-wasip1/release/key_auth.wasm \
       /out/filters/

# glibc, libgcc, CA certificates, /tmp and the nonroot user (65532); no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/portcullis /usr/local/bin/portcullis
COPY --from=build /out/filters/ /usr/local/lib/portcullis/filters/
COPY --from=build --chown=65532:65532 /out/cache /var/cache/portcullis
ENV PORTCULLIS_CACHE_DIR=/var/cache/portcullis
USER 65532:65532
WORKDIR /
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["run", "--config", "/etc/portcullis/portcullis.yaml"]
