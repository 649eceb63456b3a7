package main

// The soak client: 'lockfs-bench soak-client' (hidden; started by
// 'lockfs-bench soak'). It loops until a CLOCK_MONOTONIC deadline taking
// and releasing locks on random names through random mounts and random
// interfaces, and writes one line per event to its log with write(2) (no
// buffering, so that the lines before a SIGKILL survive):
//
//	BEGIN name iface t mount
//	ENTER name mode token t pid iface mount     t = just after the grant
//	LOST  name mode token t errno               the verification read failed
//	EXIT  name mode token t                     t = just before the release
//	FAIL  iface errno t mount
//	VIOL  text...                               an undocumented result
//
// Times are CLOCK_MONOTONIC in ns, system-wide, so the logs of all clients
// and the chaos record of the parent merge on one time line.

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// soakIfaces are the interfaces a client picks from. blocking marks the
// ones whose wait time is measured.
var soakIfaces = []struct {
	name     string
	mode     string // ex or sh; "" = chosen at random (flock-nb)
	blocking bool
}{
	{"open", "ex", true},
	{"shared", "sh", true},
	{"try", "ex", false},
	{"timeout", "ex", false},
	{"flock-ex", "ex", true},
	{"flock-sh", "sh", true},
	{"flock-nb", "", false},
	{"fcntl", "ex", true},
}

// soakDocumented are the errnos a lock attempt may fail with.
var soakDocumented = map[unix.Errno]bool{
	unix.EAGAIN: true, unix.EINTR: true, unix.EIO: true, unix.ENOTCONN: true,
	unix.ECONNABORTED: true, unix.ENOSPC: true, unix.EROFS: true, unix.ENOLCK: true,
}

func monoNow() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

type soakClient struct {
	log    int
	mounts []string
	names  int
	rng    *rand.Rand
	pid    int
	// mnt is the unique id of the FUSE mount on the mountpoint when the
	// current attempt began (0: none; mntUnknown: a kernel older than 6.8
	// cannot tell), see fuseMount.
	mnt uint64
}

func (c *soakClient) logf(format string, a ...any) {
	_, _ = unix.Write(c.log, []byte(fmt.Sprintf(format, a...)+"\n"))
}

func runSoakClient(args []string) error {
	fl := flag.NewFlagSet("soak-client", flag.ExitOnError)
	logPath := fl.String("log", "", "log file")
	mounts := fl.String("mounts", "", "comma-separated mountpoints")
	names := fl.Int("names", 16, "names")
	seed := fl.Uint64("seed", 1, "seed")
	until := fl.Int64("until", 0, "CLOCK_MONOTONIC deadline (ns)")
	once := fl.Bool("once", false, "make one blocking exclusive open of the first name through the first mount and hold it until it fails")
	_ = fl.Parse(args)
	fd, err := unix.Open(*logPath, unix.O_WRONLY|unix.O_CREAT|unix.O_APPEND|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	c := &soakClient{log: fd, mounts: strings.Split(*mounts, ","), names: *names,
		rng: rand.New(rand.NewPCG(*seed, uint64(os.Getpid()))), pid: os.Getpid()}
	if *once {
		c.finalWait()
		return nil
	}
	for monoNow() < *until {
		c.once()
	}
	return nil
}

// once makes one lock attempt and, on a grant, holds and releases it.
func (c *soakClient) once() {
	name := fmt.Sprintf("n%02d", c.rng.IntN(c.names))
	mi := c.rng.IntN(len(c.mounts))
	m := c.mounts[mi]
	ii := c.rng.IntN(len(soakIfaces))
	ifc := soakIfaces[ii]
	mode := ifc.mode
	if mode == "" {
		mode = []string{"ex", "sh"}[c.rng.IntN(2)]
	}
	c.mnt = fuseMount(c.mounts[mi])
	c.logf("BEGIN %s %s %d %d", name, ifc.name, monoNow(), mi)
	var fd int
	var err error
	switch ifc.name {
	case "open":
		fd, err = unix.Open(filepath.Join(m, name), unix.O_RDWR|unix.O_CLOEXEC, 0)
	case "shared":
		fd, err = unix.Open(filepath.Join(m, ".shared", name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	case "try":
		fd, err = unix.Open(filepath.Join(m, ".try", name), unix.O_RDWR|unix.O_CLOEXEC, 0)
	case "timeout":
		fd, err = unix.Open(filepath.Join(m, ".timeout", "0.05", name), unix.O_RDWR|unix.O_CLOEXEC, 0)
	case "flock-ex", "flock-sh", "flock-nb":
		fd, err = unix.Open(filepath.Join(m, ".flock", name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == nil {
			how := unix.LOCK_EX
			if mode == "sh" {
				how = unix.LOCK_SH
			}
			if ifc.name == "flock-nb" {
				how |= unix.LOCK_NB
			}
			if err = unix.Flock(fd, how); err != nil {
				_ = unix.Close(fd)
			}
		}
	case "fcntl":
		fd, err = unix.Open(filepath.Join(m, ".flock", name), unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err == nil {
			lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0}
			if err = unix.FcntlFlock(uintptr(fd), unix.F_SETLKW, &lk); err != nil {
				_ = unix.Close(fd)
			}
		}
	}
	tGrant := monoNow()
	if err != nil {
		c.fail(ifc.name, mi, err)
		return
	}
	buf := make([]byte, 512)
	n, rerr := unix.Pread(fd, buf, 0)
	if rerr != nil {
		// Granted but unreadable at once: lost before the first read
		// (its daemon died or the state dir failed). No ENTER: the
		// client never learnt a token, so it never acted as a holder.
		c.fail(ifc.name, mi, rerr)
		_ = unix.Close(fd)
		return
	}
	line, _, _ := strings.Cut(string(buf[:n]), "\n")
	token, perr := strconv.ParseUint(line, 10, 64)
	if perr != nil {
		var st unix.Statfs_t
		_ = unix.Fstatfs(fd, &st)
		c.logf("VIOL %s %s: first line %q is not a token (fs type %#x)", ifc.name, name, line, st.Type)
		_ = unix.Close(fd)
		return
	}
	c.logf("ENTER %s %s %d %d %d %s %d", name, mode, token, tGrant, c.pid, ifc.name, mi)
	time.Sleep(time.Duration(c.rng.IntN(5001)) * time.Microsecond)
	if _, rerr := unix.Pread(fd, buf, 0); rerr != nil {
		c.logf("LOST %s %s %d %d %s", name, mode, token, monoNow(), errnoName(rerr))
	}
	c.logf("EXIT %s %s %d %d", name, mode, token, monoNow())
	switch ifc.name {
	case "flock-ex", "flock-sh", "flock-nb":
		if c.rng.IntN(2) == 0 {
			_ = unix.Flock(fd, unix.LOCK_UN)
		}
	case "fcntl":
		if c.rng.IntN(2) == 0 {
			lk := unix.Flock_t{Type: unix.F_UNLCK}
			_ = unix.FcntlFlock(uintptr(fd), unix.F_SETLK, &lk)
		}
	}
	_ = unix.Close(fd)
}

// finalWait is a final waiter: one blocking open of n00 through the first
// mount, which the soak holds until it stops the daemons. A grant is held
// until a read fails (the daemon stopped), so the client always ends with
// a FAIL or a LOST line.
func (c *soakClient) finalWait() {
	c.mnt = fuseMount(c.mounts[0])
	c.logf("BEGIN n00 open %d 0", monoNow())
	fd, err := unix.Open(filepath.Join(c.mounts[0], "n00"), unix.O_RDWR|unix.O_CLOEXEC, 0)
	tGrant := monoNow()
	if err != nil {
		c.fail("final", 0, err)
		return
	}
	buf := make([]byte, 512)
	n, err := unix.Pread(fd, buf, 0)
	if err != nil {
		c.fail("final", 0, err)
		return
	}
	line, _, _ := strings.Cut(string(buf[:n]), "\n")
	token, _ := strconv.ParseUint(line, 10, 64)
	c.logf("ENTER n00 ex %d %d %d final 0", token, tGrant, c.pid)
	for {
		time.Sleep(10 * time.Millisecond)
		if _, err := unix.Pread(fd, buf, 0); err != nil {
			c.logf("LOST n00 ex %d %d %s", token, monoNow(), errnoName(err))
			c.logf("EXIT n00 ex %d %d", token, monoNow())
			_ = unix.Close(fd)
			return
		}
	}
}

// fail logs a failed attempt. ENOENT counts as the documented "unmounted"
// failure when the attempt did not run on one FUSE mount from start to end:
// the mountpoint held no FUSE mount when it began or now, or another one
// now (a daemon restarted meanwhile after a lazy unmount). Only an ENOENT
// from the very mount the attempt began on is a violation. Kernels before
// 6.8 have no unique mount ids: there an ENOENT is a violation whenever a
// FUSE mount is there now, as long as one was there at the start.
func (c *soakClient) fail(iface string, mi int, err error) {
	e, _ := err.(unix.Errno)
	name := errnoName(err)
	switch {
	case soakDocumented[e]:
		c.logf("FAIL %s %s %d %d", iface, name, monoNow(), mi)
	case e == unix.ENOENT && c.unmountedSince(mi):
		c.logf("FAIL %s ENOENT-unmounted %d %d", iface, monoNow(), mi)
	default:
		c.logf("VIOL %s on %s: undocumented error %s (%v)", iface, c.mounts[mi], name, err)
	}
	switch e {
	case unix.EAGAIN:
		time.Sleep(time.Millisecond)
	case unix.EINTR:
	default:
		// The daemon is restarting or the state dir is failing: do not
		// spin.
		time.Sleep(20 * time.Millisecond)
	}
}

// mntUnknown is fuseMount's answer for a FUSE mount whose unique id the
// kernel does not report (before Linux 6.8).
const mntUnknown = ^uint64(0)

// fuseMount returns the unique id (statx STATX_MNT_ID_UNIQUE, never reused
// while the system runs) of the FUSE mount at path, 0 when path is not the
// root of a FUSE mount, or mntUnknown.
func fuseMount(path string) uint64 {
	if !isFuse(path) {
		return 0
	}
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_MNT_ID_UNIQUE, &stx); err != nil ||
		stx.Mask&unix.STATX_MNT_ID_UNIQUE == 0 {
		return mntUnknown
	}
	return stx.Mnt_id
}

// unmountedSince reports whether mount mi was not the same FUSE mount
// throughout the current attempt (see fail).
func (c *soakClient) unmountedSince(mi int) bool {
	if c.mnt == 0 {
		return true
	}
	now := fuseMount(c.mounts[mi])
	if c.mnt == mntUnknown {
		return now == 0
	}
	return now != c.mnt
}

func isFuse(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.FUSE_SUPER_MAGIC
}

func errnoName(err error) string {
	if e, ok := err.(unix.Errno); ok {
		if n := soakErrnoNames[e]; n != "" {
			return n
		}
		return "errno" + strconv.Itoa(int(e))
	}
	return strings.ReplaceAll(err.Error(), " ", "_")
}

var soakErrnoNames = map[unix.Errno]string{
	unix.EAGAIN: "EAGAIN", unix.EINTR: "EINTR", unix.EIO: "EIO", unix.ENOTCONN: "ENOTCONN",
	unix.ECONNABORTED: "ECONNABORTED", unix.ENOSPC: "ENOSPC", unix.EROFS: "EROFS", unix.ENOLCK: "ENOLCK",
	unix.ENOENT: "ENOENT", unix.EBUSY: "EBUSY", unix.EPERM: "EPERM", unix.EACCES: "EACCES",
	unix.ETIMEDOUT: "ETIMEDOUT", unix.EDEADLK: "EDEADLK", unix.EBADF: "EBADF", unix.EINVAL: "EINVAL",
	unix.ENODEV: "ENODEV", unix.ESTALE: "ESTALE", unix.EEXIST: "EEXIST", unix.ENOTDIR: "ENOTDIR",
}
