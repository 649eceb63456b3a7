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
//	EXIT  name mode token t                     t = just before the verification read
//	FAIL  iface errno t mount
//	VIOL  text...                               an undocumented result
//
// Times are CLOCK_MONOTONIC in ns, system-wide, so the logs of all clients
// and the chaos record of the parent merge on one time line.
//
// A grant is verified by reads of its descriptor: one just after the grant
// (it yields the token) and one after the hold. The client claims to have
// held the lock from its ENTER time to its EXIT time, and both are taken
// before the read that verifies them: a read that succeeds after EXIT
// proves that the lease was not broken or lost up to EXIT, while time spent
// after the read (the read itself, a SIGSTOP, the scheduler) is no longer
// claimed, since the lease may be broken then and its name granted to the
// next holder before the release. A read interrupted by a signal (EINTR,
// which the Go runtime's preemption signal causes) is made again.

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

// soakDocumented are the errnos a lock attempt may fail with. ENOENT is not
// among them: it is documented only while the mountpoint has no daemon
// (between a daemon's SIGKILL and its restart, or after the shutdown),
// which the checker judges from the parent's record of those windows.
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
	n, rerr := preadRetry(fd, buf)
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
	tExit := monoNow()
	if _, rerr := preadRetry(fd, buf); rerr != nil {
		c.logf("LOST %s %s %d %d %s", name, mode, token, monoNow(), errnoName(rerr))
	}
	c.logf("EXIT %s %s %d %d", name, mode, token, tExit)
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
// a FAIL or a LOST line. Its lines name the interface "final", which the
// checker reports apart (its wait lasts until the shutdown by design, so
// it is not a wait of the blocking interfaces). An open interrupted by a
// signal is made again, as os.OpenFile does.
func (c *soakClient) finalWait() {
	c.logf("BEGIN n00 final %d 0", monoNow())
	var fd int
	var err error
	for {
		fd, err = unix.Open(filepath.Join(c.mounts[0], "n00"), unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			break
		}
	}
	tGrant := monoNow()
	if err != nil {
		c.fail("final", 0, err)
		return
	}
	buf := make([]byte, 512)
	n, err := preadRetry(fd, buf)
	if err != nil {
		c.fail("final", 0, err)
		_ = unix.Close(fd)
		return
	}
	line, _, _ := strings.Cut(string(buf[:n]), "\n")
	token, perr := strconv.ParseUint(line, 10, 64)
	if perr != nil {
		c.logf("VIOL final n00: first line %q is not a token", line)
		_ = unix.Close(fd)
		return
	}
	c.logf("ENTER n00 ex %d %d %d final 0", token, tGrant, c.pid)
	for {
		time.Sleep(10 * time.Millisecond)
		tExit := monoNow()
		if _, err := preadRetry(fd, buf); err != nil {
			c.logf("LOST n00 ex %d %d %s", token, monoNow(), errnoName(err))
			c.logf("EXIT n00 ex %d %d", token, tExit)
			_ = unix.Close(fd)
			return
		}
	}
}

// preadRetry reads the start of fd, again when a signal interrupted the
// read (EINTR): an interrupted read says nothing about the lease.
func preadRetry(fd int, buf []byte) (int, error) {
	for {
		n, err := unix.Pread(fd, buf, 0)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// fail logs a failed attempt: a documented errno or ENOENT (which the
// checker judges, see soakDocumented) as FAIL, anything else as VIOL.
func (c *soakClient) fail(iface string, mi int, err error) {
	e, _ := err.(unix.Errno)
	name := errnoName(err)
	if soakDocumented[e] || e == unix.ENOENT {
		c.logf("FAIL %s %s %d %d", iface, name, monoNow(), mi)
	} else {
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
