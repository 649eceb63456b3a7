// Package docker holds the container end-to-end tests of lockfs.
//
// The tests drive the docker CLI (os/exec) against the local engine. No
// registry is needed: the test image is generated offline from a static
// lockfs binary (CGO_ENABLED=0) and Debian's busybox-static and loaded with
// `docker import`.
//
// Everything the tests create carries the label lockfs.test=1 plus the run id
// and pid of the test process (lockfs.test.run, lockfs.test.pid); host
// directories live under $TMPDIR/lockfs-docker-<pid>-*. TestMain sweeps
// leftovers of dead runs at start and this run's own at the end.
//
// The tests need root, /dev/fuse and a Docker engine. Without them they skip
// with the reason, unless LOCKFS_DOCKER_REQUIRED=1, which makes them fail.
// LOCKFS_BIN (a static lockfs binary) and LOCKFS_BUSYBOX (a static busybox)
// override the binaries put into the image.
package docker
