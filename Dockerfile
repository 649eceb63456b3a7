# lockfs in a container: a FUSE filesystem of locks.
#
#   docker build -t lockfs .
#   docker run -d --name lockfs --device /dev/fuse --cap-add SYS_ADMIN \
#     --security-opt apparmor=unconfined -v lockfs-state:/var/lib/lockfs lockfs
#
# See "Running in Docker" in README.md for sharing the mount with other
# containers and the host.

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/lockfs ./cmd/lockfs

FROM debian:bookworm-slim
COPY --from=build /out/lockfs /usr/local/bin/lockfs
RUN mkdir -p /mnt/locks /var/lib/lockfs
# Lock state (the engine's backing directory). Daemons in several containers
# that mount the same volume share one set of locks.
VOLUME /var/lib/lockfs
# lockfs unmounts and exits on SIGTERM (docker stop).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/lockfs", "mount"]
CMD ["--state-dir", "/var/lib/lockfs", "/mnt/locks"]
