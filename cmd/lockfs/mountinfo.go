package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/fsnode"
	"github.com/lockfs/lockfs/internal/mountinfo"
)

// topMount returns the fstype of the topmost mount at mnt, or "" when
// nothing is mounted there.
func topMount(mnt string) (string, error) {
	ms, err := mountinfo.Read()
	if err != nil {
		return "", err
	}
	at := mountinfo.At(ms, mnt)
	if len(at) == 0 {
		return "", nil
	}
	return at[len(at)-1].FSType, nil // later lines are mounted on top
}

// errNoAnswer: stat of the mountpoint did not return in time.
var errNoAnswer = errors.New("no answer")

// statWithin stats path, asking its filesystem (a FUSE daemon) even when
// the kernel caches its attributes, giving up after d: a FUSE mount whose
// daemon is stopped would block stat indefinitely.
func statWithin(path string, d time.Duration) error {
	done := make(chan error, 1)
	go func() {
		// Forced: attributes the kernel still caches would answer
		// without asking the (possibly dead) daemon.
		var stx unix.Statx_t
		done <- unix.Statx(unix.AT_FDCWD, path, unix.AT_STATX_FORCE_SYNC, unix.STATX_TYPE, &stx)
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		return errNoAnswer
	}
}

// removeStaleMounts lazily unmounts dead FUSE mounts at mnt (stat fails
// with ENOTCONN: their daemon was killed). A live lockfs mount there is an
// error: another daemon serves it.
func removeStaleMounts(mnt string, root bool, logger *slog.Logger) error {
	for range 8 { // mounts may be stacked; each round removes the top one
		fstype, err := topMount(mnt)
		if err != nil {
			return err
		}
		serr := statWithin(mnt, 2*time.Second)
		switch {
		case errors.Is(serr, syscall.ENOTCONN):
			if err := lazyUnmount(mnt, root); err != nil {
				return fmt.Errorf("mount: removing the stale mount at %s: %w", mnt, err)
			}
			logger.Info("removed stale mount", "mountpoint", mnt, "fstype", fstype)
			continue
		case errors.Is(serr, errNoAnswer):
			return fmt.Errorf("mount: %s does not answer (a %s daemon that is stopped?); unmount it first (umount -l %s)",
				mnt, fstype, mnt)
		case fstype == fsnode.FSType:
			return fmt.Errorf("mount: %s is already served by a running lockfs daemon; stop it or unmount it first", mnt)
		}
		return nil
	}
	return fmt.Errorf("mount: could not remove the stale mounts at %s", mnt)
}

// lazyUnmount detaches the mount at mnt (umount -l): it disappears from the
// namespace at once and goes away when its last open file is closed.
func lazyUnmount(mnt string, root bool) error {
	if root {
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("umount -l %s: %w", mnt, err)
		}
		return nil
	}
	bin, err := fusermountPath()
	if err != nil {
		return fmt.Errorf("umount -l %s: %w", mnt, err)
	}
	out, err := exec.Command(bin, "-u", "-z", mnt).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s -u -z %s: %w: %s", bin, mnt, err, strings.TrimSpace(string(out)))
	}
	return nil
}
