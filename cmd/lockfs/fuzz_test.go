package main

import (
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/lockfs/lockfs/fsnode"
	"github.com/lockfs/lockfs/lockengine"
)

// Fuzz targets for the client commands' parsers: the command lines of
// run, status, break and mount, lock paths, and the holders attribute.
// None touches the filesystem beyond fcntl(F_GETFD) of --ready-fd. Run one
// longer with
//
//	go test -run '^$' -fuzz '^FuzzParseRunArgs$' -fuzztime 1m ./cmd/lockfs/

// splitArgs turns one fuzz string into an argument vector: NUL separates
// arguments, as in /proc/PID/cmdline.
func splitArgs(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "\x00")
}

// checkLockTarget checks an accepted (dir, lock) for the NAME argument
// given: lock is a valid, unreserved name, and an absolute NAME names
// exactly dir/lock.
func checkLockTarget(t *testing.T, name, dir, lock string) {
	t.Helper()
	if err := lockengine.ValidateName(lock); err != nil {
		t.Fatalf("%q: accepted lock name %q (%v)", name, lock, err)
	}
	for c := range strings.SplitSeq(lock, "/") {
		if fsnode.IsReserved(c) {
			t.Fatalf("%q: accepted lock name %q with the reserved component %q", name, lock, c)
		}
	}
	if dir == "" {
		t.Fatalf("%q: empty mount directory", name)
	}
	if filepath.IsAbs(name) {
		if got, want := filepath.Join(dir, lock), filepath.Clean(name); got != want {
			t.Fatalf("%q: split into %q + %q = %q, not the path given (%q)", name, dir, lock, got, want)
		}
	} else if lock != name {
		t.Fatalf("relative %q: lock %q", name, lock)
	}
}

// FuzzLockTarget: lockTarget accepts only valid lock names, and splits an
// absolute path into exactly that path's directory and last component.
func FuzzLockTarget(f *testing.F) {
	for _, s := range []string{"x", "/m/x", "/m/x/", "/m/x//", "/m/x/.", "/m/x/..", "/m/./x", "/m/../x", "//x", "/",
		"/.try", "/m/.try/x", "/m/.timeout/2/x", "/m/.shared", "/m/.flock/x", "a/b", ".shared", ".flock", ".", "..", ".try", ".timeout", "", "/m/a\x00b",
		"/" + strings.Repeat("n", 256)} {
		f.Add("", s)
		f.Add("/mnt/locks", s)
	}
	f.Fuzz(func(t *testing.T, mount, name string) {
		dir, lock, err := lockTarget(mount, name)
		if err != nil {
			var ue usageError
			if !errors.As(err, &ue) {
				t.Fatalf("lockTarget(%q, %q) = %v: not a usage error", mount, name, err)
			}
			return
		}
		checkLockTarget(t, name, dir, lock)
		if !filepath.IsAbs(name) && mount != "" && dir != mount {
			t.Fatalf("lockTarget(%q, %q): dir %q", mount, name, dir)
		}
	})
}

// FuzzParseRunArgs: whatever 'lockfs run' accepts is consistent (a valid
// lock, a COMMAND, -n and -w exclusive, -E in 0..255), and the lock path it
// opens is one the filesystem parses back to the same lock and wait.
func FuzzParseRunArgs(f *testing.F) {
	for _, s := range []string{
		"x\x00true", "--mount\x00/m\x00x\x00--\x00cmd\x00-n\x00arg", "-s\x00-n\x00-E\x009\x00/mnt/l/y\x00true",
		"--mount\x00/m\x00-w\x001.5\x00x\x00true", "-w\x000\x00x\x00true", "-w\x00-0.0000000001\x00x\x00true",
		"-w\x001e-10\x00x\x00true", "-w\x002562047h47m16s\x00x\x00true", "-w\x000x1p4\x00x\x00true",
		"-n\x00-w\x001\x00x\x00true", "-E\x00300\x00x\x00true", "-E\x00-1\x00x\x00true", "--kill-grace\x00-1s\x00x\x00true",
		"-h", "--help", "", "x", "x\x00--", "a/b\x00true", ".try\x00true", "/m/x/\x00true", "/\x00true",
		"--timeout=5\x00--shared\x00--nonblock=false\x00x\x00sh", "-w\x00NaN\x00x\x00true", "--\x00x\x00true",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		args := splitArgs(s)
		c, err := parseRunArgs(args)
		if err != nil {
			return // runRun prints any error with the usage and exits 64
		}
		checkLockTarget(t, c.argv0Name(args), c.dir, c.name)
		switch {
		case len(c.argv) == 0:
			t.Fatalf("%q: no COMMAND", args)
		case c.try && c.wait >= 0:
			t.Fatalf("%q: -n with -w %v", args, c.wait)
		case c.conflict < 0 || c.conflict > 255:
			t.Fatalf("%q: -E %d", args, c.conflict)
		case c.killGrace < 0:
			t.Fatalf("%q: --kill-grace %v", args, c.killGrace)
		}
		// The path is what the filesystem sees: its components must
		// parse back to the same lock and the same wait.
		p := c.lockPath()
		rel, err := filepath.Rel(c.dir, p)
		if err != nil {
			t.Fatalf("%q: lock path %q outside %q", args, p, c.dir)
		}
		// The name may be a path (team/x) when the lock is in a lock
		// directory of a mount.
		n := strings.Count(c.name, "/")
		comps := strings.Split(rel, "/")
		if len(comps) <= n || strings.Join(comps[len(comps)-1-n:], "/") != c.name {
			t.Fatalf("%q: lock path %q does not end in %q", args, p, c.name)
		}
		comps = comps[:len(comps)-n]
		switch {
		case c.try || c.wait == 0:
			if len(comps) != 2 || comps[0] != fsnode.TryDir {
				t.Fatalf("%q: try path %q", args, p)
			}
		case c.wait > 0:
			if len(comps) != 3 || comps[0] != fsnode.TimeoutDir {
				t.Fatalf("%q: timeout path %q", args, p)
			}
			d, err := fsnode.ParseTimeout(comps[1])
			if err != nil || d != c.wait {
				t.Fatalf("%q: -w %v became %q, which the filesystem reads as %v, %v", args, c.wait, comps[1], d, err)
			}
		case c.shared:
			if len(comps) != 2 || comps[0] != fsnode.SharedDir {
				t.Fatalf("%q: blocking shared path %q", args, p)
			}
		default:
			if len(comps) != 1 {
				t.Fatalf("%q: blocking path %q", args, p)
			}
		}
	})
}

// argv0Name returns the NAME argument of args as parseRunArgs saw it: the
// last argument before c.argv (and its "--").
func (c *runConfig) argv0Name(args []string) string {
	i := len(args) - len(c.argv) - 1
	if i > 0 && args[i] == "--" && args[i-1] != "--" {
		// "NAME -- COMMAND": unless NAME itself was "--" after a "--".
		i--
	}
	return args[i]
}

// FuzzParseStatusArgs: status accepts at most one MOUNTPOINT, and every
// error is help or a usage error.
func FuzzParseStatusArgs(f *testing.F) {
	for _, s := range []string{"", "--json", "/m", "--json\x00/m", "/m\x00--json", "a\x00b", "-h", "--bogus", "--json=false\x00/m",
		"--\x00-x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		args := splitArgs(s)
		mnt, _, err := parseStatusArgs(args)
		checkUsageErr(t, args, err)
		if err == nil && mnt == "" {
			t.Fatalf("%q: empty mountpoint", args)
		}
	})
}

// FuzzParseBreakArgs: break accepts exactly one valid lock NAME, and every
// error is help or a usage error.
func FuzzParseBreakArgs(f *testing.F) {
	for _, s := range []string{"x", "--mount\x00/m\x00x", "/m/x", "/m/x/", "", "a\x00b", "-h", ".try", "--mount=/m\x00..",
		"--\x00-x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		args := splitArgs(s)
		dir, name, err := parseBreakArgs(args)
		checkUsageErr(t, args, err)
		if err == nil {
			checkLockTarget(t, args[len(args)-1], dir, name)
		}
	})
}

func checkUsageErr(t *testing.T, args []string, err error) {
	t.Helper()
	var ue usageError
	if err != nil && !errors.Is(err, flag.ErrHelp) && !errors.As(err, &ue) {
		t.Fatalf("%q: %v: neither help nor a usage error", args, err)
	}
}

// FuzzParseMountArgs: what 'lockfs mount' accepts passes its own checks
// (heartbeat, takeover, backend and queue flags are checked later, at
// start, and must give usage errors there, never panic).
func FuzzParseMountArgs(f *testing.F) {
	for _, s := range []string{"/m", "--state-dir\x00/s\x00/m", "/m\x00--heartbeat\x001s\x00--takeover-after\x003s",
		"--takeover-after\x002s\x00--heartbeat\x001s\x00/m", "--heartbeat\x000s\x00/m", "--log-level\x00DEBUG+2\x00/m",
		"--ready-fd\x00-2\x00/m", "--ready-fd\x009999\x00/m", "--\x00--m", "a\x00b", "", "-h", "\x00--heartbeat\x001s",
		"--engine\x00etcd\x00--etcd-endpoints\x00http://h:2379,https://x\x00/m",
		"--engine\x00etcd\x00--etcd-endpoints\x00 , ://\x00/m", "--etcd-prefix\x00/\x00/m",
		"--engine\x00etcd\x00--etcd-endpoints\x00http://h\x00--etcd-cacert\x00ca\x00/m",
		"--metrics-addr\x00:9\x00/m", "--metrics-addr\x00[::1\x00/m", "--lock-delay\x00-1s\x00/m"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		args := splitArgs(s)
		cfg, err := parseMountArgs(args)
		if err != nil {
			return // runMount makes any error a usage error
		}
		if cfg.mountpoint == "" {
			t.Fatalf("%q: empty mountpoint accepted (it would mount on the working directory)", args)
		}
		if cfg.heartbeat <= 0 || cfg.takeoverAfter < 0 || (cfg.takeoverAfter > 0 && cfg.takeoverAfter < 3*cfg.heartbeat) {
			t.Fatalf("%q: heartbeat %v takeover %v", args, cfg.heartbeat, cfg.takeoverAfter)
		}
		for what, err := range map[string]error{"backend": cfg.backend.check(), "queue": cfg.queue.check()} {
			var ue usageError
			if err != nil && !errors.As(err, &ue) {
				t.Fatalf("%q: %s check: %v: not a usage error", args, what, err)
			}
		}
	})
}

// FuzzParseHolders: parseHolders never panics, keeps only lines of at
// least six fields, and what it returns formats back (as the filesystem
// writes it) to text that parses to the same holders.
func FuzzParseHolders(f *testing.F) {
	for _, s := range []string{"", "1 2 3 exclusive 4 2026-01-01T00:00:00Z\n",
		"1 2 3 exclusive 4 2026-01-01T00:00:00Z\n5 6 0 shared 4 2026-01-01T00:00:01Z lost\n",
		"1 2 3 exclusive 4\n", "x y z m t g\n", "4294967296 -1 +3 s 18446744073709551616 g extra\n",
		"\n\n\n", "1\t2\v3\f4\r5 6", "1 2 3 shared 4 g lost more\n", "1 2 3 shared 4 g\u00a0lost\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		hs := parseHolders(s)
		if hs == nil {
			t.Fatalf("%q: nil, want an empty list", s)
		}
		if n := strings.Count(s, "\n") + 1; len(hs) > n {
			t.Fatalf("%q: %d holders from %d lines", s, len(hs), n)
		}
		var b strings.Builder
		for _, h := range hs {
			if h.Mode == "" || h.Granted == "" || strings.ContainsAny(h.Mode+h.Granted, " \t\n") {
				t.Fatalf("%q: holder %+v", s, h)
			}
			fmt.Fprintf(&b, "%d %d %d %s %d %s %s", h.UID, h.GID, h.PID, h.Mode, h.Token, h.Granted, h.Via)
			if h.Lost {
				b.WriteString(" lost")
			}
			b.WriteByte('\n')
		}
		if again := parseHolders(b.String()); !reflect.DeepEqual(again, hs) {
			t.Fatalf("%q: parsed %+v, formatted %q, parsed again %+v", s, hs, b.String(), again)
		}
	})
}
