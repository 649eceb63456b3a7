package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// TestSoakShort is the short soak CI runs: 'lockfs-bench soak -duration
// 45s' (2 daemons on one state tmpfs, 200 clients, chaos), which exits
// non-zero on any violation of mutual exclusion, fencing, stuck waits, D
// state or leaked state files (see cmd/lockfs-bench/soak_check.go). It
// does not run in parallel with the other tests: it loads the machine.
func TestSoakShort(t *testing.T) {
	env.Require(t)
	bench := filepath.Join(t.TempDir(), "lockfs-bench")
	if err := harness.Build(bench, "github.com/lockfs/lockfs/cmd/lockfs-bench"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bench, "soak", "-duration", "45s", "-lockfs", env.Lockfs)
	// SIGINT first: the soak then cleans up its mounts before exiting.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	t.Logf("lockfs-bench soak output:\n%s", out.String())
	if ctx.Err() != nil {
		t.Fatalf("lockfs-bench soak did not finish within 4 minutes: %v", err)
	}
	if err != nil {
		t.Fatalf("lockfs-bench soak: %v", err)
	}
}
