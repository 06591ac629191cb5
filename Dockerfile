# syntax=docker/dockerfile:1
#
# relay46 container image: one static binary on distroless, running as the
# non-root user 65532. See deploy/README.md for docker compose.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) -t relay46 .
#   docker run -d --network host -v /etc/relay46:/etc/relay46:ro -v relay46:/var/lib/relay46 relay46
#
# Base images are pinned by tag. For reproducible builds, pin them by digest
# too (the tag then only documents what the digest is):
#   FROM golang:1.26.8-bookworm@sha256:<digest> AS build
# and let a bot (Renovate, Dependabot) update the digests.

FROM golang:1.26.8-bookworm AS build
# setcap, for the file capability below; /state, an empty directory that
# becomes the storage volume's mount point.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir /state
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# The Makefile's build target: the one BUILD command that CI and
# `make release` use (static: CGO_ENABLED=0, -trimpath, version stamped by
# -ldflags). Then the file capability that lets the non-root user bind
# :80 and :443 (why this mechanism: deploy/README.md, "Binding :80 and :443").
RUN make build VERSION="${VERSION}" \
 && setcap cap_net_bind_service=+ep relay46 \
 && ./relay46 version

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="relay46" \
      org.opencontainers.image.description="An IPv4 front door for servers that live on IPv6: SNI passthrough and TLS termination to a home's IPv6 address" \
      org.opencontainers.image.source="https://github.com/relay46/relay46" \
      org.opencontainers.image.documentation="https://github.com/relay46/relay46/blob/main/deploy/README.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
# BuildKit (Docker's default builder since 23.0) keeps the file capability
# (the security.capability xattr) through COPY --from; the legacy builder
# drops it.
COPY --from=build /src/relay46 /relay46
# Certificates, keys and the ACME account (acme.storage's default). The
# directory exists in the image, owned by the user, so that a new volume
# mounted there starts out writable by it.
COPY --from=build --chown=65532:65532 --chmod=0700 /state /var/lib/relay46
VOLUME /var/lib/relay46
EXPOSE 80 443
USER 65532:65532
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["/relay46", "health"]
ENTRYPOINT ["/relay46"]
CMD ["run", "-config", "/etc/relay46/relay46.yaml"]
