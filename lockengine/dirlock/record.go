package dirlock

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/lockengine"
)

// This file holds the low-level pieces of the directory backend: lock files,
// their records, and the guard.

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

func flock(fd, how int) error {
	return ignoringEINTR(func() error { return unix.Flock(fd, how) })
}

func ignoringEINTR(f func() error) error {
	for {
		if err := f(); err != unix.EINTR {
			return err
		}
	}
}

func ignoringEINTR2(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if err != unix.EINTR {
			return n, err
		}
	}
}

func flockHow(m lockengine.Mode) int {
	if m == lockengine.Exclusive {
		return unix.LOCK_EX
	}
	return unix.LOCK_SH
}

// guard is the never-unlinked guard file. Every change of which inode a lock
// path names (removal of an unused file, replacement by a takeover) happens
// under the guard held exclusively, and every acquirer verifies its freshly
// locked inode under the guard held shared, so no acquirer can verify a file
// that is being removed or replaced. The guard also stores the token floor:
// the highest token of any removed lock file.
//
// flock(2) locks belong to the open file description, so the goroutines of
// one process share one shared flock, counted in readers.
type guard struct {
	fd   int
	wait time.Duration // bounded wait for the flock; a stopped holder hurts liveness only

	rw      sync.RWMutex // readers hold R, exclusive users hold W
	mu      sync.Mutex
	readers int // guarded by mu; holders of the shared flock in this process
}

// errGuardBusy: the guard was not available within the bounded wait.
var errGuardBusy = fmt.Errorf("guard busy: %w", lockengine.ErrWouldBlock)

func (g *guard) lockShared(wait bool) error {
	g.rw.RLock()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.readers == 0 {
		if err := g.flockBounded(unix.LOCK_SH, wait); err != nil {
			g.rw.RUnlock()
			return err
		}
	}
	g.readers++
	return nil
}

func (g *guard) unlockShared() {
	g.mu.Lock()
	g.readers--
	if g.readers == 0 {
		_ = flock(g.fd, unix.LOCK_UN)
	}
	g.mu.Unlock()
	g.rw.RUnlock()
}

func (g *guard) lockExclusive() error {
	g.rw.Lock()
	if err := g.flockBounded(unix.LOCK_EX, true); err != nil {
		g.rw.Unlock()
		return err
	}
	return nil
}

func (g *guard) unlockExclusive() {
	_ = flock(g.fd, unix.LOCK_UN)
	g.rw.Unlock()
}

func (g *guard) flockBounded(how int, wait bool) error {
	err := flock(g.fd, how|unix.LOCK_NB)
	if err == nil {
		return nil
	}
	if err != unix.EWOULDBLOCK {
		return fmt.Errorf("guard: flock: %w", err)
	}
	if !wait {
		return errGuardBusy
	}
	deadline := time.Now().Add(g.wait)
	for d := 50 * time.Microsecond; time.Now().Before(deadline); d = min(2*d, 5*time.Millisecond) {
		time.Sleep(d)
		switch err := flock(g.fd, how|unix.LOCK_NB); err {
		case nil:
			return nil
		case unix.EWOULDBLOCK:
		default:
			return fmt.Errorf("guard: flock: %w", err)
		}
	}
	return errGuardBusy
}

// floor returns the token floor. Call with the guard held.
func (g *guard) floor() (uint64, error) {
	n, _, err := readRecord(g.fd, floorPrefix)
	if err != nil {
		return 0, fmt.Errorf("guard: %w", err)
	}
	return n, nil
}

// raiseFloor makes the floor at least n. Call with the guard held
// exclusively.
func (g *guard) raiseFloor(n uint64) error {
	cur, err := g.floor()
	if err != nil || cur >= n {
		return err
	}
	if err := writeRecord(g.fd, floorPrefix, n); err != nil {
		return fmt.Errorf("guard: %w", err)
	}
	return nil
}

// fstatat stats name relative to dirfd without following a symlink.
func fstatat(dirfd int, name string, st *unix.Stat_t) error {
	return ignoringEINTR(func() error { return unix.Fstatat(dirfd, name, st, unix.AT_SYMLINK_NOFOLLOW) })
}

// Filesystem magic numbers (statfs f_type) of filesystems on which flock(2)
// is emulated, local to one client, or whose attribute caching defeats
// inode checks.
var remoteFS = map[int64]string{
	0x6969:     "nfs",
	0x517b:     "smb",
	-0xacb2be:  "cifs", // 0xff534d42 as int32
	-0x1acb2be: "smb2", // 0xfe534d42 as int32
	0x00c36400: "ceph",
	0x01021997: "9p",
	0x5346414f: "afs",
	0x0bd00bd0: "lustre",
	0x47504653: "gpfs",
}

const fuseMagic = 0x65735546

// fsType returns the statfs type of path's filesystem, normalised to the
// sign of the kernel's 32-bit value.
func fsType(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, err
	}
	return int64(int32(uint32(st.Type))), nil
}
