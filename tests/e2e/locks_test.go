package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// Every name exists: lookup succeeds, regular file, mode 0666, one stable
// inode per name.
func TestLookupAnyNameStableInode(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})

	ino := map[string]uint64{}
	for _, name := range []string{"alpha", "beta", "with space", "x.lock", strings.Repeat("n", 255)} {
		st, err := os.Stat(d.Path(name))
		require.NoError(t, err, "stat %q", name)
		assert.True(t, st.Mode().IsRegular(), "%q: mode %v, want a regular file", name, st.Mode())
		assert.Equal(t, os.FileMode(0o666), st.Mode().Perm(), "%q: permissions", name)
		ino[name] = st.Sys().(*syscall.Stat_t).Ino
	}
	// Stable: a second lookup, and a lookup after the name was locked and
	// released, give the same inode.
	h := e.Hold(t, d.Path("alpha"), "w")
	harness.Release(t, h)
	waitHolders(t, d.Path("alpha"), 0) // released at the RELEASE that follows close(2)
	for name, want := range ino {
		st, err := os.Stat(d.Path(name))
		require.NoError(t, err)
		assert.Equal(t, want, st.Sys().(*syscall.Stat_t).Ino, "inode of %q changed", name)
	}
	assert.NotEqual(t, ino["alpha"], ino["beta"], "two names share an inode")
}

// Blocking happens in OPEN only: while an open waits, lookups, ls and
// other names are not stalled (a blocking CREATE would hold the directory
// lock).
func TestWaitingOpenDoesNotStallDirectory(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})

	e.Hold(t, d.Path("x"), "w")
	// bash's `exec 9>` uses O_CREAT|O_TRUNC: the case that stalls if the
	// filesystem blocks in CREATE.
	w := shellWaiter(t, e, d.Path("x"), ">")
	w.WaitBlockedInOpen(patience)

	p := e.Bash(t, `stat -c %i "$M/x" >/dev/null && stat -c %i "$M/y" >/dev/null && ls "$M" >/dev/null &&
exec 9>"$M/y" && echo done`, "M="+d.Mountpoint)
	p.WaitLine("done", patience)
	require.Equal(t, 0, p.Wait(patience))
	requireBlocked(t, w)
}

// exec 9>, 9>> and 9<> take the exclusive lock: a second opener of any
// mode waits until the first closes.
func TestExclusiveShellModes(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	for i, redir := range []string{">", ">>", "<>"} {
		t.Run(strconv.Quote(redir), func(t *testing.T) {
			t.Parallel()
			path := d.Path("excl" + strconv.Itoa(i))
			h := shellHold(t, e, path, redir)
			requireHeld(t, e, path)
			assert.Equal(t, "EAGAIN", probe(t, e, path, "r"), "shared try while held exclusively")

			w := shellWaiter(t, e, path, redir)
			w.WaitBlockedInOpen(patience)
			r := shellWaiter(t, e, sharedPath(path), "<")
			r.WaitBlockedInOpen(patience)
			requireBlocked(t, w)

			shellRelease(t, h)
			w.WaitLine("granted", patience)
			requireBlocked(t, r)
			shellRelease(t, w)
			r.WaitLine("granted", patience)
		})
	}
}

// exec 9<M/.shared/NAME takes the shared lock: two readers hold it
// together, a writer waits for both, and a reader waits for a writer.
func TestSharedReaders(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	path := d.Path("shared")

	r1 := shellHold(t, e, sharedPath(path), "<")
	r2 := shellHold(t, e, sharedPath(path), "<") // granted while r1 holds
	assert.Equal(t, "granted", probe(t, e, path, "r"), "a third reader's try")
	w := shellWaiter(t, e, path, ">")
	w.WaitBlockedInOpen(patience)

	shellRelease(t, r1)
	stayBlocked(t, w, 300*time.Millisecond) // r2 still holds
	shellRelease(t, r2)
	w.WaitLine("granted", patience)

	// A writer excludes readers.
	r3 := shellWaiter(t, e, sharedPath(path), "<")
	r3.WaitBlockedInOpen(patience)
	requireBlocked(t, r3)
	shellRelease(t, w)
	r3.WaitLine("granted", patience)
}

// Waiters are granted in arrival order: each appends its id to a file
// when granted.
func TestFIFOOrder(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	path := d.Path("fifo")
	order := filepath.Join(t.TempDir(), "order")

	h := e.Hold(t, path, "w")
	const n = 6
	var ws []*harness.Proc
	for i := 1; i <= n; i++ {
		script := `exec 9>"$P" || exit 1; echo "$ID" >>"$ORDER"; exec 9>&-`
		var w *harness.Proc
		if i%2 == 0 {
			w = e.Sh(t, script, "P="+path, "ID="+strconv.Itoa(i), "ORDER="+order)
		} else {
			w = e.Bash(t, script, "P="+path, "ID="+strconv.Itoa(i), "ORDER="+order)
		}
		w.WaitBlockedInOpen(patience) // queued before the next one starts
		ws = append(ws, w)
	}
	harness.Release(t, h)
	for _, w := range ws {
		require.Equal(t, 0, w.Wait(patience), "waiter: %s", w.Stderr())
	}
	got, err := os.ReadFile(order)
	require.NoError(t, err)
	assert.Equal(t, "1\n2\n3\n4\n5\n6\n", string(got), "grant order")
}

// Consecutive readers at the head of the queue are granted together; a
// writer queued behind them waits for all of them.
func TestFIFOMixedModes(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	path := d.Path("mixed")

	h := e.Hold(t, path, "w")
	w1 := e.Waiter(t, path, "w")
	r2 := e.Waiter(t, sharedPath(path), "r")
	r3 := e.Waiter(t, sharedPath(path), "r")
	w4 := e.Waiter(t, path, "w")

	harness.Release(t, h)
	harness.Granted(t, w1, patience)
	requireBlocked(t, r2)
	requireBlocked(t, r3)

	harness.Release(t, w1)
	harness.Granted(t, r2, patience)
	harness.Granted(t, r3, patience)
	requireBlocked(t, w4)

	harness.Release(t, r2)
	stayBlocked(t, w4, 300*time.Millisecond) // r3 still holds
	harness.Release(t, r3)
	harness.Granted(t, w4, patience)
}

// A writer is not starved by readers: once it waits, later readers queue
// behind it (readers' tries get EAGAIN).
func TestWriterNotStarved(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})

	t.Run("queue", func(t *testing.T) {
		t.Parallel()
		path := d.Path("queue")
		r1 := e.Hold(t, sharedPath(path), "r")
		w := e.Waiter(t, path, "w")
		assert.Equal(t, "EAGAIN", probe(t, e, path, "r"), "reader's try behind a queued writer")
		r3 := e.Waiter(t, sharedPath(path), "r")

		harness.Release(t, r1)
		harness.Granted(t, w, patience)
		requireBlocked(t, r3)
		harness.Release(t, w)
		harness.Granted(t, r3, patience)
	})

	t.Run("stream", func(t *testing.T) {
		t.Parallel()
		path := d.Path("stream")
		// Overlapping readers: one starts every 50ms and holds for 200ms,
		// so without FIFO there would never be a moment without a reader.
		s := e.Bash(t, `while :; do ( exec 9<"$P" && echo reader && sleep 0.2 ) & sleep 0.05; done`, "P="+sharedPath(path))
		for range 5 {
			s.WaitLine("reader", patience)
		}
		w := e.GoClient(t, "-mode", "w", path)
		start := w.WaitLine("start", patience)
		granted := harness.Granted(t, w, patience)
		begin, _ := strconv.ParseInt(start[1], 10, 64)
		t.Logf("writer granted after %s despite a stream of readers", ms(granted-begin))
		assert.Equal(t, "EAGAIN", probe(t, e, path, "r"), "a reader got in while the writer held the lock")
		harness.Release(t, w)
		s.WaitLine("reader", patience)
	})
}
