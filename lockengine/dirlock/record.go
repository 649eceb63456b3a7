package dirlock

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"

	"golang.org/x/sys/unix"
)

// lockFile is an open descriptor of a lock file and the identity of the
// inode it was opened on.
type lockFile struct {
	fd       int
	dev, ino uint64
}

// errReplaced: the locked descriptor no longer names the file at the lock
// path (it was removed, or replaced by a takeover). Always retried with a
// fresh descriptor.
var errReplaced = errors.New("lock file replaced or removed")

// Records are fixed-width text lines so that a pwrite at offset 0 always
// overwrites the whole record and `cat` shows it.
const (
	tokenPrefix = "lockfs1 token="
	floorPrefix = "lockfs1 floor="
	recordLen   = len(tokenPrefix) + 20 + 1
)

// appendRecord appends the record line for n to b.
func appendRecord(b []byte, prefix string, n uint64) []byte {
	b = append(b, prefix...)
	var digits [20]byte
	d := strconv.AppendUint(digits[:0], n, 10)
	for i := len(d); i < 20; i++ {
		b = append(b, '0')
	}
	b = append(b, d...)
	return append(b, '\n')
}

// readRecord reads the number stored in fd's record. empty is true for a
// file that has never been written.
func readRecord(fd int, prefix string) (n uint64, empty bool, err error) {
	var buf [recordLen]byte
	m, err := unix.Pread(fd, buf[:], 0)
	for err == unix.EINTR {
		m, err = unix.Pread(fd, buf[:], 0)
	}
	if err != nil {
		return 0, false, fmt.Errorf("read record: %w", err)
	}
	if m == 0 {
		return 0, true, nil
	}
	rec := buf[:m]
	if m != recordLen || !bytes.HasPrefix(rec, []byte(prefix)) || rec[m-1] != '\n' {
		return 0, false, fmt.Errorf("read record: corrupt record %q", rec)
	}
	n, err = strconv.ParseUint(string(rec[len(prefix):m-1]), 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("read record: corrupt record %q: %w", rec, err)
	}
	return n, false, nil
}

func writeRecord(fd int, prefix string, n uint64) error {
	var buf [recordLen]byte
	rec := appendRecord(buf[:0], prefix, n)
	m, err := unix.Pwrite(fd, rec, 0)
	for err == unix.EINTR {
		m, err = unix.Pwrite(fd, rec, 0)
	}
	if err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	if m != len(rec) {
		return fmt.Errorf("write record: short write (%d of %d bytes)", m, len(rec))
	}
	return nil
}

// touch sets fd's access and modification times to now (futimens), the
// freshness write of holders that do not rewrite the record.
func touch(fd int) error {
	_, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, 0, 0, 0, 0)
	if errno != 0 {
		return fmt.Errorf("refresh: futimens: %w", errno)
	}
	return nil
}

// errTokenOverflow: the record holds the largest token; a grant cannot go
// above it (only a corrupt or forged record gets there).
var errTokenOverflow = errors.New("fencing token at its maximum (corrupt record?)")

// nextToken returns n+1, or errTokenOverflow instead of wrapping to 0.
func nextToken(n uint64) (uint64, error) {
	if n == math.MaxUint64 {
		return 0, fmt.Errorf("read record: token %d: %w", n, errTokenOverflow)
	}
	return n + 1, nil
}
