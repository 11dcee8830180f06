# cdcinvalidate: static binary on a distroless base, running as non-root.
#   docker build -t cdcinvalidate .
#   docker run --rm -e CDC_POSTGRES_DSN=... -e CDC_REDIS_ADDR=... \
#     -v "$PWD/rules.yaml:/etc/cdcinvalidate/rules.yaml:ro" cdcinvalidate

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
    -o /out/cdcinvalidate ./cmd/cdcinvalidate

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/cdcinvalidate /cdcinvalidate
# A default configuration; mount your own over it. CDC_POSTGRES_DSN and
# CDC_REDIS_ADDR override its dsn and addr.
COPY rules.yaml /etc/cdcinvalidate/rules.yaml
USER nonroot:nonroot
# SIGTERM (docker stop) is a graceful stop: it confirms what was applied and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/cdcinvalidate"]
CMD ["run", "--config", "/etc/cdcinvalidate/rules.yaml"]
