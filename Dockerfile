# syntax=docker/dockerfile:1
#
# fhir-bulk-proxy container image: a static Go binary on distroless, running as
# the non-root user 65532 with its data directory as a volume.
#
#   docker build --build-arg VERSION=1.0.0 -t fhir-bulk-proxy:1.0.0 .
#   docker run --rm -p 8080:8080 -v fbp-data:/var/lib/fhir-bulk-proxy \
#       -e FBP_UPSTREAM=http://fhir.example:8080/fhir -e FBP_BASE_PATH=/fhir fhir-bulk-proxy:1.0.0
#
# deploy/README.md has the compose and Kubernetes examples; deploy/deploy_test.go
# checks this file and runs its go build.

# ---- build stage ----
# At least the go directive of go.mod, so no toolchain is downloaded.
FROM golang:1.26.8-bookworm AS build
WORKDIR /src

# Modules first, so that source changes do not invalidate the download layer.
COPY go.mod go.sum ./
RUN go mod download

COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath \
        -ldflags "-s -w -X main.version=${VERSION}" \
        -o /out/fhir-bulk-proxy ./cmd/fhir-bulk-proxy

# The final stage has no shell to mkdir with: the data directory is made here
# and copied over with its owner set to the non-root user.
RUN mkdir -p /out/data && chmod 0750 /out/data

# ---- final stage ----
# distroless/static: CA certificates, tzdata, /etc/passwd with nonroot (65532),
# no shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="fhir-bulk-proxy" \
      org.opencontainers.image.description="FHIR Bulk Data \$export for any FHIR R4 server" \
      org.opencontainers.image.version="${VERSION}"

COPY --from=build /out/fhir-bulk-proxy /fhir-bulk-proxy
COPY --from=build --chown=65532:65532 /out/data /var/lib/fhir-bulk-proxy

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532

# The bbolt job store (jobs.db) and the exported files (files/) live here.
ENV FBP_DATA_DIR=/var/lib/fhir-bulk-proxy \
    FBP_LISTEN=0.0.0.0:8080
VOLUME ["/var/lib/fhir-bulk-proxy"]
EXPOSE 8080

# FBP_UPSTREAM (or --upstream) is required; every option has an FBP_* variable.
ENTRYPOINT ["/fhir-bulk-proxy"]
CMD ["serve"]
