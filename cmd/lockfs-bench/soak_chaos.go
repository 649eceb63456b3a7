package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// soakFault is a chaos kind with its weight; backend limits it to the dir
// or the etcd backend ("": both).
type soakFault struct {
	kind    string
	weight  int
	backend string
}

// soakFaults are the chaos kinds: the state-dir and etcd faults and daemon
// kills are rarer so that the lock traffic is not mostly failures.
var soakFaults = []soakFault{
	{"daemon-kill", 1, ""},
	{"client-kill", 3, ""},
	{"client-stop", 3, ""},
	{"break", 3, ""},
	{"state-full", 1, "dir"},
	{"state-ro", 1, "dir"},
	{"etcd-stop", 1, "etcd"},
}

// faultKinds returns the chaos kinds that apply to the run's backend.
func (r *soakRun) faultKinds() []soakFault {
	backend := "dir"
	if r.c.etcd {
		backend = "etcd"
	}
	var out []soakFault
	for _, f := range soakFaults {
		if f.backend == "" || f.backend == backend {
			out = append(out, f)
		}
	}
	return out
}

// chaos injects one fault at a time, every 100-500 ms, until the deadline
// (CLOCK_MONOTONIC ns). Faults that need undoing (SIGSTOP, a full or
// read-only state tmpfs) are undone before the next one; a daemon is
// restarted at once. An error means the run cannot go on (a daemon does
// not restart).
func (r *soakRun) chaos(mounts []string, until int64) error {
	kinds := r.faultKinds()
	total := 0
	for _, f := range kinds {
		total += f.weight
	}
	// Every kind once first, in random order, so that a short run has
	// them all; then kinds drawn by weight.
	first := r.rng.Perm(len(kinds))
	for i := 0; ; i++ {
		time.Sleep(time.Duration(100+r.rng.IntN(401)) * time.Millisecond)
		if monoNow() >= until {
			return nil
		}
		kind := ""
		if i < len(first) {
			kind = kinds[first[i]].kind
		} else {
			k := r.rng.IntN(total)
			for _, f := range kinds {
				if k < f.weight {
					kind = f.kind
					break
				}
				k -= f.weight
			}
		}
		outcome, err := r.inject(kind, mounts, until)
		if err != nil {
			return err
		}
		r.mu.Lock()
		r.faults[kind+outcome]++
		r.mu.Unlock()
	}
}

// inject injects one fault; outcome is "" or a suffix such as
// " (refused: EBUSY)" that is counted separately.
func (r *soakRun) inject(kind string, mounts []string, until int64) (string, error) {
	moment := func() time.Duration { return time.Duration(100+r.rng.IntN(301)) * time.Millisecond }
	switch kind {
	case "daemon-kill":
		first := 0
		if r.c.spareFirst && len(r.slots) > 1 {
			first = 1
		}
		s := r.slots[first+r.rng.IntN(len(r.slots)-first)]
		r.mu.Lock()
		d := s.d
		r.mu.Unlock()
		t := monoNow()
		err := d.proc.Kill()
		r.record(soakEvent{kind: "daemon-kill", t: t, slot: s.idx})
		if err != nil {
			return "", err
		}
		// Lazy unmount: the clients of the dead mount get ENOTCONN /
		// ECONNABORTED, and ENOENT until the new daemon mounts.
		_ = d.proc.UnmountLeftover()
		time.Sleep(time.Duration(r.rng.IntN(200)) * time.Millisecond)
		var err2 error
		start := time.Now()
		for range 5 {
			if err2 = r.startDaemon(s); err2 == nil {
				r.mu.Lock()
				r.restarts = append(r.restarts, time.Since(start))
				r.mu.Unlock()
				return "", nil
			}
			r.mu.Lock()
			r.startFailures = append(r.startFailures, err2.Error())
			r.mu.Unlock()
			time.Sleep(time.Second)
		}
		return "", fmt.Errorf("restart of daemon %d failed: %w", s.idx, err2)
	case "client-kill":
		// A client whose log ends in ENTER holds a lock.
		pids := r.liveClients()
		for range 30 {
			if len(pids) == 0 {
				break
			}
			pid := pids[r.rng.IntN(len(pids))]
			r.mu.Lock()
			p := r.clients[pid]
			r.mu.Unlock()
			if p == nil || !lastLineIs(p.log, "ENTER") {
				continue
			}
			t := monoNow()
			_ = unix.Kill(pid, unix.SIGKILL)
			<-p.done
			r.record(soakEvent{kind: "client-kill", t: t, pid: pid, log: p.log})
			if monoNow() < until {
				if err := r.startClient(mounts, until); err != nil {
					return "", err
				}
			}
			return "", nil
		}
		return " (no holder found)", nil
	case "client-stop":
		pids := r.liveClients()
		if len(pids) == 0 {
			return " (no client)", nil
		}
		pid := pids[r.rng.IntN(len(pids))]
		if err := unix.Kill(pid, unix.SIGSTOP); err != nil {
			return " (gone)", nil
		}
		time.Sleep(time.Duration(r.rng.IntN(201)) * time.Millisecond)
		_ = unix.Kill(pid, unix.SIGCONT)
		return "", nil
	case "break":
		s := r.slots[r.rng.IntN(len(r.slots))]
		name := fmt.Sprintf("n%02d", r.rng.IntN(r.c.names))
		t := monoNow()
		var err error
		via := "unlink"
		if r.rng.IntN(2) == 0 {
			err = unix.Unlink(filepath.Join(s.mnt, name))
		} else {
			via = "lockfs-break"
			out, cerr := exec.Command(r.b.lockfs, "break", "--mount", s.mnt, name).CombinedOutput()
			if cerr != nil {
				// "lockfs: break PATH: not held (no such file or
				// directory)": keep the reason, not the path.
				msg := string(bytes.TrimSpace(out))
				if i := strings.LastIndex(msg, ": "); i >= 0 {
					msg = msg[i+2:]
				}
				err = errors.New(msg)
			}
		}
		if err != nil {
			return fmt.Sprintf(" (%s refused: %s)", via, errText(err)), nil
		}
		r.record(soakEvent{kind: "break", t: t, slot: s.idx, name: name})
		return " (" + via + ")", nil
	case "state-full":
		path := filepath.Join(r.stateFS, "filler")
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return " (refused: " + errText(err) + ")", nil
		}
		buf := make([]byte, 1<<20)
		full := false
		for range 1 << 14 {
			if _, err := f.Write(buf); err != nil {
				full = errors.Is(err, unix.ENOSPC)
				break
			}
		}
		_ = f.Close()
		time.Sleep(moment())
		if err := os.Remove(path); err != nil {
			return "", fmt.Errorf("free the state tmpfs: %w", err)
		}
		if !full {
			return " (not full)", nil
		}
		return "", nil
	case "etcd-stop":
		// etcd stops answering for a moment well inside the sessions'
		// TTL: requests wait or fail (EIO), and no session expires.
		r.etcd.mu.Lock()
		etcd := r.etcd.procs[0].Process
		r.etcd.mu.Unlock()
		if err := etcd.Signal(unix.SIGSTOP); err != nil {
			return "", fmt.Errorf("stop etcd: %w", err)
		}
		time.Sleep(moment())
		if err := etcd.Signal(unix.SIGCONT); err != nil {
			return "", fmt.Errorf("continue etcd: %w", err)
		}
		return "", nil
	case "state-ro":
		// mount -o remount,ro of the tmpfs is refused (EBUSY) while a
		// daemon has a state file open for writing. Then the fault is a
		// read-only bind mount of the state dir over itself: every new
		// open, create or rename in the state dir fails with EROFS,
		// while descriptors opened before keep working.
		if err := unix.Mount("", r.stateFS, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err == nil {
			time.Sleep(moment())
			if err := unix.Mount("", r.stateFS, "", unix.MS_REMOUNT, ""); err != nil {
				return "", fmt.Errorf("remount the state tmpfs read-write: %w", err)
			}
			return " (tmpfs remount,ro)", nil
		} else if !errors.Is(err, unix.EBUSY) {
			return " (refused: " + errText(err) + ")", nil
		}
		if err := unix.Mount(r.state, r.state, "", unix.MS_BIND, ""); err != nil {
			return " (bind refused: " + errText(err) + ")", nil
		}
		outcome := " (tmpfs remount,ro EBUSY; ro bind over STATE)"
		if err := unix.Mount("", r.state, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			outcome = " (ro bind refused: " + errText(err) + ")"
		} else {
			time.Sleep(moment())
		}
		if err := unix.Unmount(r.state, 0); err != nil {
			if err := unix.Unmount(r.state, unix.MNT_DETACH); err != nil {
				return "", fmt.Errorf("unmount the read-only bind of the state dir: %w", err)
			}
		}
		return outcome, nil
	}
	return "", fmt.Errorf("unknown fault %q", kind)
}

func (r *soakRun) record(e soakEvent) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

// lastLineIs reports whether the last line of the file starts with word.
func lastLineIs(path, word string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return false
	}
	off := max(st.Size()-256, 0)
	buf := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil {
		return false
	}
	buf = bytes.TrimRight(buf, "\n")
	if i := bytes.LastIndexByte(buf, '\n'); i >= 0 {
		buf = buf[i+1:]
	}
	return bytes.HasPrefix(buf, []byte(word+" "))
}

func errText(err error) string {
	var e unix.Errno
	if errors.As(err, &e) {
		return errnoName(e)
	}
	s := err.Error()
	if len(s) > 60 {
		s = s[:60]
	}
	return s
}
