// Package e2e holds the black-box end-to-end tests of lockfs: each test
// builds nothing itself but mounts the real `lockfs` binary (built once by
// TestMain) in temporary directories and drives it with real clients: bash,
// busybox sh, the Go client in ./lockclient and a Python client.
//
// The tests need root and /dev/fuse. Without them they skip, unless
// LOCKFS_E2E_REQUIRED is set (CI sets it), in which case the run fails. Run:
//
//	LOCKFS_E2E_REQUIRED=1 go test ./tests/e2e/
//
// Every test unmounts what it mounted and kills what it started; the run
// fails if a fuse.lockfs mount is left under its temporary root.
package e2e
