package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clientC is the C client of the fs benchmark, compiled with gcc at run
// time. A C client keeps the client side of every figure down to the bare
// system calls. Modes:
//
//	open PATH N             N x open(O_RDWR)+close; prints the elapsed ns
//	multi N CHUNK SPEC...   N x open+close (o:PATH; a:PATH alternates PATH and
//	                        PATH-b; t:PATH opens like the shell's >; w:PATH
//	                        opens O_WRONLY; n:PATH opens O_WRONLY a fresh
//	                        name PATH.PID.I each time) or
//	                        open+flock+unlock+close (f:PATH; l:PATH opens
//	                        O_RDONLY) per SPEC, in alternating chunks;
//	                        prints ns each
//	flock PATH N            N x open(O_CREAT)+flock(EX)+flock(UN)+close; prints ns
//	handoff PATH ROUNDS ID  ROUNDS x open, hold, close; prints "G ns"/"R ns" lines
//	fhandoff PATH ROUNDS ID open(O_RDONLY) once, then ROUNDS x flock(EX), hold,
//	                        flock(UN); prints "G ns"/"R ns" lines
//	wait PATH               open(O_RDWR) (blocks while the name is held), exit
//	hold DIR PREFIX N       open DIR/PREFIX0..N-1, print "ready", hold until stdin EOF
//
// Times are CLOCK_MONOTONIC, which is shared by all processes.
const clientC = `#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static long long now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what, const char *path) {
	fprintf(stderr, "fsclient: %s %s: %s\n", what, path, strerror(errno));
	exit(1);
}

static void sleep_us(long us) {
	struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

int main(int argc, char **argv) {
	if (argc < 3) {
		fprintf(stderr, "usage: fsclient open|flock|multi|handoff|fhandoff|wait|hold ...\n");
		return 2;
	}
	const char *mode = argv[1], *path = argv[2];
	if (strcmp(mode, "open") == 0 && argc == 4) {
		long n = atol(argv[3]);
		long long t0 = now();
		for (long i = 0; i < n; i++) {
			int fd = open(path, O_RDWR | O_CLOEXEC);
			if (fd < 0) die("open", path);
			if (close(fd) != 0) die("close", path);
		}
		printf("%lld\n", now() - t0);
		return 0;
	}
	if (strcmp(mode, "flock") == 0 && argc == 4) {
		long n = atol(argv[3]);
		long long t0 = now();
		for (long i = 0; i < n; i++) {
			int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
			if (fd < 0) die("open", path);
			if (flock(fd, LOCK_EX) != 0) die("flock", path);
			if (flock(fd, LOCK_UN) != 0) die("unlock", path);
			if (close(fd) != 0) die("close", path);
		}
		printf("%lld\n", now() - t0);
		return 0;
	}
	if (strcmp(mode, "multi") == 0 && argc >= 5) {
		/* multi N CHUNK SPEC...: N operations on each SPEC ("o:PATH" for
		   open+close, "a:PATH" for open+close alternating between PATH
		   and PATH-b, "t:PATH" for a shell-style open (O_WRONLY|O_CREAT|
		   O_TRUNC)+close, "w:PATH" for open(O_WRONLY)+close, "n:PATH" for
		   open(O_WRONLY)+close of a fresh name PATH.PID.I each time (its
		   first lookup), "f:PATH" for open+flock+unlock+close, "l:PATH"
		   for open(O_RDONLY)+flock+unlock+close), run in alternating
		   chunks of CHUNK so that all see the same machine; prints the
		   total ns of each SPEC, one per line. */
		long n = atol(argv[2]), chunk = atol(argv[3]);
		int k = argc - 4;
		long long *tot = calloc(k, sizeof *tot), fresh = 0;
		if (!tot) die("calloc", "");
		for (long done = 0; done < n; done += chunk) {
			long m = n - done < chunk ? n - done : chunk;
			for (int j = 0; j < k; j++) {
				const char *spec = argv[4 + j], *ps[2];
				char alt[4096];
				int fl = spec[0] == 'f' || spec[0] == 'l', tr = spec[0] == 't';
				int rd = spec[0] == 'l';
				int wr = spec[0] == 'w' || spec[0] == 'n', nw = spec[0] == 'n';
				ps[0] = ps[1] = spec + 2;
				if (spec[0] == 'a') {
					snprintf(alt, sizeof alt, "%s-b", spec + 2);
					ps[1] = alt;
				}
				long long t0 = now();
				for (long i = 0; i < m; i++) {
					const char *p = ps[i & 1];
					if (nw) {
						snprintf(alt, sizeof alt, "%s.%d.%lld", spec + 2, (int)getpid(), fresh++);
						p = alt;
					}
					int fd = rd ? open(p, O_RDONLY | O_CLOEXEC)
					     : wr ? open(p, O_WRONLY | O_CLOEXEC)
					     : fl ? open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644)
					     : tr ? open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666)
						  : open(p, O_RDWR | O_CLOEXEC);
					if (fd < 0) die("open", p);
					if (fl && flock(fd, LOCK_EX) != 0) die("flock", p);
					if (fl && flock(fd, LOCK_UN) != 0) die("unlock", p);
					if (close(fd) != 0) die("close", p);
				}
				tot[j] += now() - t0;
			}
		}
		for (int j = 0; j < k; j++) printf("%lld\n", tot[j]);
		return 0;
	}
	if (strcmp(mode, "handoff") == 0 && argc == 5) {
		long rounds = atol(argv[3]), id = atol(argv[4]);
		long long *g = calloc(rounds, sizeof *g), *r = calloc(rounds, sizeof *r);
		if (!g || !r) die("calloc", path);
		for (long i = 0; i < rounds; i++) {
			int fd = open(path, O_RDWR | O_CLOEXEC);
			if (fd < 0) die("open", path);
			g[i] = now();
			/* Hold long enough for the other process to be waiting. */
			sleep_us(500 + (i * 7919 + id * 104729) % 2500);
			r[i] = now();
			if (close(fd) != 0) die("close", path);
			/* Let the other process take it before asking again. */
			sleep_us(200);
		}
		for (long i = 0; i < rounds; i++) printf("G %lld\nR %lld\n", g[i], r[i]);
		return 0;
	}
	if (strcmp(mode, "fhandoff") == 0 && argc == 5) {
		/* Like handoff, through flock(2) on one read-only descriptor
		   (which takes nothing on lockfs): G after flock(LOCK_EX)
		   returns, R before flock(LOCK_UN). */
		long rounds = atol(argv[3]), id = atol(argv[4]);
		long long *g = calloc(rounds, sizeof *g), *r = calloc(rounds, sizeof *r);
		if (!g || !r) die("calloc", path);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) die("open", path);
		for (long i = 0; i < rounds; i++) {
			if (flock(fd, LOCK_EX) != 0) die("flock", path);
			g[i] = now();
			sleep_us(500 + (i * 7919 + id * 104729) % 2500);
			r[i] = now();
			if (flock(fd, LOCK_UN) != 0) die("unlock", path);
			sleep_us(200);
		}
		if (close(fd) != 0) die("close", path);
		for (long i = 0; i < rounds; i++) printf("G %lld\nR %lld\n", g[i], r[i]);
		return 0;
	}
	if (strcmp(mode, "wait") == 0 && argc == 3) {
		int fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0) die("open", path);
		return 0;
	}
	if (strcmp(mode, "hold") == 0 && argc == 5) {
		long n = atol(argv[4]);
		struct rlimit rl = {n + 64, n + 64};
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0) die("setrlimit", "RLIMIT_NOFILE");
		char name[4096];
		for (long i = 0; i < n; i++) {
			snprintf(name, sizeof name, "%s/%s%ld", path, argv[3], i);
			if (open(name, O_RDWR | O_CLOEXEC) < 0) die("open", name);
		}
		printf("ready\n");
		fflush(stdout);
		char buf[64];
		while (read(0, buf, sizeof buf) > 0) {
		}
		return 0;
	}
	fprintf(stderr, "fsclient: bad arguments\n");
	return 2;
}
`

// compileClient writes clientC into dir and compiles it with gcc; it
// returns the path of the binary.
func compileClient(dir string) (string, error) {
	dir = filepath.Join(dir, "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	src := filepath.Join(dir, "fsclient.c")
	bin := filepath.Join(dir, "fsclient")
	if err := os.WriteFile(src, []byte(clientC), 0o644); err != nil {
		return "", err
	}
	out, err := exec.Command("gcc", "-O2", "-Wall", "-o", bin, src).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("gcc: %w: %s", err, bytes.TrimSpace(out))
	}
	return bin, nil
}

// clientNs runs the client in a timing mode (open, flock) and returns the
// ns per operation it reports.
func (b *fsBench) clientNs(mode, path string, n int) (float64, error) {
	cmd := exec.Command(b.client, mode, path, strconv.Itoa(n))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := b.output(cmd, 2*time.Minute)
	if err != nil {
		return 0, fmt.Errorf("client %s %s: %w: %s", mode, path, err, bytes.TrimSpace(stderr.Bytes()))
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("client %s %s: bad output %q", mode, path, out)
	}
	return float64(ns) / float64(n), nil
}

// multiNs runs the client's multi mode: n operations on each spec
// ("o:PATH", "w:PATH", "f:PATH", ...; see clientC) in alternating chunks;
// it returns ns per operation for each spec.
func (b *fsBench) multiNs(n, chunk int, specs ...string) ([]float64, error) {
	args := append([]string{"multi", strconv.Itoa(n), strconv.Itoa(chunk)}, specs...)
	cmd := exec.Command(b.client, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := b.output(cmd, 5*time.Minute)
	if err != nil {
		return nil, fmt.Errorf("client multi: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	f := strings.Fields(string(out))
	if len(f) != len(specs) {
		return nil, fmt.Errorf("client multi: bad output %q", out)
	}
	res := make([]float64, len(f))
	for i, v := range f {
		ns, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("client multi: bad output %q", out)
		}
		res[i] = float64(ns) / float64(n)
	}
	return res, nil
}

// output runs cmd, registered for cleanup, and returns its stdout; it kills
// cmd after timeout.
func (b *fsBench) output(cmd *exec.Cmd, timeout time.Duration) ([]byte, error) {
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	if err := b.start(cmd); err != nil {
		return nil, err
	}
	t := time.AfterFunc(timeout, func() { _ = cmd.Process.Kill() })
	err := b.wait(cmd)
	t.Stop()
	return stdout.Bytes(), err
}

// holder is a client in hold mode: it holds its names until stopped.
type holder struct {
	b   *fsBench
	cmd *exec.Cmd
	in  io.WriteCloser
}

// hold starts a client that opens dir/prefix0..n-1 and waits until they
// are all held.
func (b *fsBench) hold(dir, prefix string, n int, timeout time.Duration) (*holder, error) {
	cmd := exec.Command(b.client, "hold", dir, prefix, strconv.Itoa(n))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := b.start(cmd); err != nil {
		return nil, err
	}
	h := &holder{b: b, cmd: cmd, in: in}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("unexpected output %q", line)
		}
		ready <- err
	}()
	select {
	case err = <-ready:
	case <-time.After(timeout):
		err = fmt.Errorf("not ready after %v", timeout)
	}
	if err != nil {
		h.stop()
		return nil, fmt.Errorf("holder of %d names: %w", n, err)
	}
	return h, nil
}

// stop makes the holder exit (closing its descriptors) and waits for it.
func (h *holder) stop() {
	_ = h.in.Close()
	t := time.AfterFunc(30*time.Second, func() { _ = h.cmd.Process.Kill() })
	_ = h.b.wait(h.cmd)
	t.Stop()
}
