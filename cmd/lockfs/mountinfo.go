package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/fsnode"
)

// mountEntry is one line of /proc/self/mountinfo, reduced to what lockfs
// needs.
type mountEntry struct {
	mountpoint string
	fstype     string
}

// parseMountinfo parses the mountinfo format of proc(5): field 5 is the
// mount point (octal-escaped), and the filesystem type follows the " - "
// separator.
func parseMountinfo(data []byte) []mountEntry {
	var out []mountEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 7 {
			continue
		}
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) {
			continue
		}
		out = append(out, mountEntry{mountpoint: unescapeMountinfo(fields[4]), fstype: fields[sep+1]})
	}
	return out
}

// unescapeMountinfo undoes the \ooo octal escapes the kernel uses for space,
// tab, newline and backslash.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// topMount returns the fstype of the topmost mount at mnt, or "" when
// nothing is mounted there.
func topMount(mnt string) (string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	fstype := ""
	for _, e := range parseMountinfo(data) {
		if e.mountpoint == mnt {
			fstype = e.fstype // later lines are mounted on top
		}
	}
	return fstype, nil
}

// errNoAnswer: stat of the mountpoint did not return in time.
var errNoAnswer = errors.New("no answer")

// statWithin stats path, giving up after d: a FUSE mount whose daemon is
// stopped would block stat indefinitely.
func statWithin(path string, d time.Duration) error {
	done := make(chan error, 1)
	go func() {
		var st unix.Stat_t
		done <- unix.Stat(path, &st)
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
