package docker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	// labelTest marks every resource the tests create (value "1").
	labelTest = "lockfs.test"
	// labelRun holds the id of the run that created a resource.
	labelRun = "lockfs.test.run"
	// labelPid holds the pid of the test process that created a resource;
	// the sweep removes resources whose process is gone.
	labelPid = "lockfs.test.pid"
	// dirPrefix starts the name of every host directory of a run:
	// $TMPDIR/lockfs-docker-<pid>-<random>.
	dirPrefix = "lockfs-docker-"
	// requiredEnv turns a missing engine, root or /dev/fuse into a failure.
	requiredEnv = "LOCKFS_DOCKER_REQUIRED"
)

var (
	// runID names this test process: <pid>-<random hex>.
	runID string
	// runDir is the host directory holding this run's bind-mount sources.
	runDir string
	// skipReason says why the tests cannot run here; empty when they can.
	skipReason string

	imageOnce sync.Once
	imageTag  string // the offline test image, built on first use
	imageErr  error
)

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	runID = fmt.Sprintf("%d-%s", os.Getpid(), randHex(3))
	skipReason = preconditions()
	if skipReason != "" {
		fmt.Fprintf(os.Stderr, "tests/docker: cannot run container tests: %s\n", skipReason)
		return m.Run() // each test skips, or fails under LOCKFS_DOCKER_REQUIRED=1
	}
	sweep(false)
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", dirPrefix, os.Getpid()))
	if err != nil {
		fmt.Fprintf(os.Stderr, "tests/docker: %v\n", err)
		return 1
	}
	runDir = dir
	code := m.Run()
	sweep(true)
	return code
}

// preconditions returns why the container tests cannot run, or "".
func preconditions() string {
	if os.Geteuid() != 0 {
		return "not root (needs mount --make-shared and FUSE in containers)"
	}
	if st, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Sprintf("no /dev/fuse: %v", err)
	} else if st.Mode()&os.ModeCharDevice == 0 {
		return "/dev/fuse is not a character device"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := dockerCtx(ctx, "version", "--format", "{{.Server.Version}}")
	if err != nil {
		return fmt.Sprintf("no Docker engine answers: %v", err)
	}
	if strings.TrimSpace(out) == "" {
		return "no Docker engine answers: empty server version"
	}
	return ""
}

// setup skips or fails t (a test or a benchmark) when the package cannot
// run and returns the test image tag, building the image on first use.
func setup(t testing.TB) string {
	t.Helper()
	if skipReason != "" {
		if os.Getenv(requiredEnv) == "1" {
			t.Fatalf("%s=1 but container tests cannot run: %s", requiredEnv, skipReason)
		}
		t.Skip("container tests cannot run: " + skipReason)
	}
	imageOnce.Do(func() {
		start := time.Now()
		imageTag, imageErr = buildImage(context.Background(), runDir)
		if imageErr == nil {
			fmt.Fprintf(os.Stderr, "tests/docker: built image %s in %v\n", imageTag, time.Since(start).Round(time.Millisecond))
		}
	})
	if imageErr != nil {
		t.Fatalf("build test image: %v", imageErr)
	}
	return imageTag
}

// sweep removes the resources left by test processes that are gone and, when
// own is set, those of this run. It only touches resources labelled
// lockfs.test=1 and host directories named $TMPDIR/lockfs-docker-<pid>-*.
func sweep(own bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "tests/docker: sweep: "+format+"\n", args...)
	}
	doomed := func(pid string) bool {
		if pid == strconv.Itoa(os.Getpid()) {
			return own
		}
		return !processAlive(pid)
	}
	filter := "label=" + labelTest + "=1"
	format := `{{.ID}}	{{.Label "` + labelPid + `"}}`

	// Containers first: they hold the mounts and volumes.
	if out, err := dockerCtx(ctx, "ps", "-a", "--filter", filter, "--format", format); err != nil {
		logf("list containers: %v", err)
	} else {
		for _, id := range pick(out, doomed) {
			if _, err := dockerCtx(ctx, "rm", "-f", "-v", id); err != nil {
				logf("remove container %s: %v", id, err)
			}
		}
	}
	sweepDirs(own, doomed, logf)
	if out, err := dockerCtx(ctx, "volume", "ls", "--filter", filter, "--format", `{{.Name}}	{{.Label "`+labelPid+`"}}`); err != nil {
		logf("list volumes: %v", err)
	} else {
		for _, name := range pick(out, doomed) {
			if _, err := dockerCtx(ctx, "volume", "rm", "-f", name); err != nil {
				logf("remove volume %s: %v", name, err)
			}
		}
	}
	if out, err := dockerCtx(ctx, "network", "ls", "--filter", filter, "--format", format); err != nil {
		logf("list networks: %v", err)
	} else {
		for _, id := range pick(out, doomed) {
			if _, err := dockerCtx(ctx, "network", "rm", id); err != nil {
				logf("remove network %s: %v", id, err)
			}
		}
	}
	out, err := dockerCtx(ctx, "images", "--filter", filter, "--format", "{{.Repository}}:{{.Tag}}")
	if err != nil {
		logf("list images: %v", err)
		return
	}
	for _, ref := range strings.Fields(out) {
		pid, err := dockerCtx(ctx, "image", "inspect", "--format", `{{index .Config.Labels "`+labelPid+`"}}`, ref)
		if err != nil || !doomed(strings.TrimSpace(pid)) {
			continue
		}
		if _, err := dockerCtx(ctx, "rmi", ref); err != nil {
			logf("remove image %s: %v", ref, err)
		}
	}
}

// pick returns the first column of the lines of out whose second column (a
// pid) is doomed.
func pick(out string, doomed func(pid string) bool) []string {
	var ids []string
	for _, line := range strings.Split(out, "\n") {
		id, pid, _ := strings.Cut(strings.TrimSpace(line), "\t")
		if id != "" && doomed(strings.TrimSpace(pid)) {
			ids = append(ids, id)
		}
	}
	return ids
}

// sweepDirs lazily unmounts everything below the doomed runs' host
// directories (stale fuse.lockfs mounts and the shared bind mounts the tests
// made) and removes the directories once nothing is mounted below them.
func sweepDirs(own bool, doomed func(pid string) bool, logf func(string, ...any)) {
	matches, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, dir := range matches {
		pid, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(dir), dirPrefix), "-")
		if _, err := strconv.Atoi(pid); err != nil || !doomed(pid) {
			continue
		}
		if err := unmountBelow(dir); err != nil {
			logf("%v; leaving %s", err, dir)
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			logf("remove %s: %v", dir, err)
		}
	}
}

// processAlive reports whether pid is a running test binary like this one.
// A reused pid of another program counts as gone.
func processAlive(pid string) bool {
	if _, err := strconv.Atoi(pid); err != nil {
		return false // unlabelled: not ours to keep
	}
	comm, err := os.ReadFile("/proc/" + pid + "/comm")
	if err != nil {
		return false
	}
	self, err := os.ReadFile("/proc/self/comm")
	return err == nil && string(comm) == string(self)
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
