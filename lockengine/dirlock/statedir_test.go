package dirlock

// The state directory belongs to the daemon (permissions tightened, other
// owners refused), every file in it is opened without following symlinks
// or waiting on FIFOs, and tokens stay above every earlier token after a
// simulated power loss (the epoch).

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/lockengine"
)

// nobody is the uid (and gid) that owns what the tests hand to "another
// user". The tests run as root.
const nobody = 65534

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown to another uid)")
	}
}

// openBounded opens dir in a goroutine and fails the test if Open does not
// return within 10s (a FIFO opened without O_NONBLOCK would hang it).
func openBounded(t *testing.T, dir string, opts Options) (*Backend, error) {
	t.Helper()
	if opts.SweepInterval == 0 {
		opts.SweepInterval = -1
	}
	type result struct {
		b   *Backend
		err error
	}
	ch := make(chan result, 1)
	go func() {
		b, err := Open(dir, opts)
		ch <- result{b, err}
	}()
	select {
	case r := <-ch:
		if r.b != nil {
			t.Cleanup(func() { _ = r.b.Close() })
		}
		return r.b, r.err
	case <-time.After(10 * time.Second):
		t.Fatalf("Open(%s) did not return within 10s", dir)
		return nil, nil
	}
}

// grant locks name exclusively through b, releases it and returns the token.
func grant(t *testing.T, b *Backend, name string) uint64 {
	t.Helper()
	h, err := b.TryLock(context.Background(), name, lockengine.Exclusive, nil)
	require.NoError(t, err, "lock %q", name)
	tok := h.Token()
	require.NoError(t, h.Unlock())
	return tok
}

func fileMode(t *testing.T, path string) uint32 {
	t.Helper()
	return lstat(t, path).Mode & 0o7777
}

// An existing state directory with the modes of earlier versions (0755,
// files 0644) owned by the daemon is tightened to 0700/0600, with a log
// line naming each path and its old mode.
func TestStateDirTightened(t *testing.T) {
	dir := prepareDir(t, "a")
	for _, p := range []string{dir, filepath.Join(dir, "locks"), filepath.Join(dir, "tmp")} {
		require.NoError(t, os.Chmod(p, 0o755))
	}
	for _, p := range []string{filepath.Join(dir, "guard"), filepath.Join(dir, "epoch"), lockPath(dir, "a")} {
		require.NoError(t, os.Chmod(p, 0o644))
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, takeoverMarker), nil, 0o644))
	var logs syncBuffer
	_, err := openBounded(t, dir, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	require.NoError(t, err)
	for _, p := range []string{dir, filepath.Join(dir, "locks"), filepath.Join(dir, "tmp")} {
		assert.Equal(t, uint32(0o700), fileMode(t, p), "mode of %s", p)
		assert.Contains(t, logs.String(), "path="+p+" old_mode=0755")
	}
	for _, p := range []string{filepath.Join(dir, "guard"), filepath.Join(dir, "epoch"), filepath.Join(dir, takeoverMarker), lockPath(dir, "a")} {
		assert.Equal(t, uint32(0o600), fileMode(t, p), "mode of %s", p)
		assert.Contains(t, logs.String(), "path="+p+" old_mode=0644")
	}
	assert.Contains(t, logs.String(), `msg="state directory permissions tightened"`)
	t.Logf("log:\n%s", logs.String())
}

// A fresh state directory is created 0700 and its files 0600.
func TestStateDirCreatedPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	b, err := openBounded(t, dir, Options{TakeoverAfter: 30 * time.Second})
	require.NoError(t, err)
	grant(t, b, "a")
	for _, p := range []string{dir, filepath.Join(dir, "locks"), filepath.Join(dir, "tmp")} {
		assert.Equal(t, uint32(0o700), fileMode(t, p), "mode of %s", p)
	}
	for _, p := range []string{filepath.Join(dir, "guard"), filepath.Join(dir, "epoch"), filepath.Join(dir, takeoverMarker), lockPath(dir, "a")} {
		assert.Equal(t, uint32(0o600), fileMode(t, p), "mode of %s", p)
	}
}

// A state directory, or anything in it, owned by another uid is refused
// with ErrUnsafeStateDir, naming the path and the fix; nothing is changed.
func TestStateDirForeignOwner(t *testing.T) {
	requireRoot(t)
	for _, rel := range []string{".", "locks", "tmp", "guard", "epoch", takeoverMarker, "locks/a"} {
		t.Run(rel, func(t *testing.T) {
			dir := prepareDir(t, "a")
			path := filepath.Join(dir, rel)
			if rel == takeoverMarker {
				require.NoError(t, os.WriteFile(path, nil, 0o600))
			}
			require.NoError(t, os.Chown(path, nobody, nobody))
			guardBefore := lstat(t, filepath.Join(dir, "guard"))
			epochBefore, err := os.ReadFile(filepath.Join(dir, "epoch"))
			require.NoError(t, err)
			_, err = openBounded(t, dir, Options{})
			require.ErrorIs(t, err, ErrUnsafeStateDir)
			assert.ErrorContains(t, err, filepath.Clean(path)+" is owned by uid 65534")
			assert.ErrorContains(t, err, "chown -R 0 "+dir)
			epochAfter, rerr := os.ReadFile(filepath.Join(dir, "epoch"))
			require.NoError(t, rerr)
			assert.Equal(t, string(epochBefore), string(epochAfter), "refused Open changed the epoch")
			assert.Equal(t, guardBefore.Mode, lstat(t, filepath.Join(dir, "guard")).Mode)
			t.Logf("%v", err)
		})
	}
	// Nothing is created in a foreign directory.
	dir := filepath.Join(t.TempDir(), "state")
	require.NoError(t, os.Mkdir(dir, 0o700))
	require.NoError(t, os.Chown(dir, nobody, nobody))
	_, err := openBounded(t, dir, Options{})
	require.ErrorIs(t, err, ErrUnsafeStateDir)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, entries, "Open created files in a directory it refused")
}

// A FIFO, a symlink or a hard-linked file at the guard, the takeover
// marker or the epoch file fails Open with a clear error, promptly; at a
// lock path it fails that name's acquisition.
func TestStateFilesNotRegular(t *testing.T) {
	kinds := []struct {
		name  string
		make  func(t *testing.T, dir, path string)
		wants string
	}{
		{"fifo", func(t *testing.T, dir, path string) { require.NoError(t, unix.Mkfifo(path, 0o600)) }, "a FIFO is there"},
		{"symlink", func(t *testing.T, dir, path string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "data"), []byte("data\n"), 0o600))
			require.NoError(t, os.Symlink(filepath.Join(dir, "data"), path))
		}, "a symlink is there"},
		{"hard link", func(t *testing.T, dir, path string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "data"), []byte("data\n"), 0o600))
			require.NoError(t, os.Link(filepath.Join(dir, "data"), path))
		}, "it has 2 hard links"},
	}
	for _, target := range []string{"guard", takeoverMarker, "epoch", "locks/x"} {
		for _, k := range kinds {
			t.Run(target+"/"+k.name, func(t *testing.T) {
				dir := t.TempDir()
				require.NoError(t, os.Mkdir(filepath.Join(dir, "locks"), 0o700))
				path := filepath.Join(dir, target)
				k.make(t, dir, path)
				b, err := openBounded(t, dir, Options{TakeoverAfter: 30 * time.Second})
				if target == "locks/x" {
					require.NoError(t, err)
					done := make(chan error, 1)
					go func() {
						_, err := b.TryLock(context.Background(), "x", lockengine.Exclusive, nil)
						done <- err
					}()
					select {
					case err = <-done:
					case <-time.After(10 * time.Second):
						t.Fatal("TryLock on a non-regular lock path did not return within 10s")
					}
				}
				require.ErrorIs(t, err, lockengine.ErrNotRegular)
				t.Logf("%v", err)
				if target != "locks/x" {
					assert.ErrorContains(t, err, path+": ")
					assert.ErrorContains(t, err, k.wants)
				}
				// Left untouched.
				assert.Equal(t, k.name != "symlink", lstat(t, path).Mode&unix.S_IFMT != unix.S_IFLNK)
				if k.name != "fifo" {
					data, err := os.ReadFile(filepath.Join(dir, "data"))
					require.NoError(t, err)
					assert.Equal(t, "data\n", string(data))
				}
			})
		}
	}
}

// Tokens after a simulated power loss: the records that hold counters
// (the lock file, the guard's floor) are rolled back to older contents or
// truncated, the epoch file is not (it is fsynced); the next tokens are
// above every earlier one.
func TestTokensAfterPowerLoss(t *testing.T) {
	for _, c := range []struct {
		name     string
		rollback func(t *testing.T, path string, old []byte)
	}{
		{"rolled back", func(t *testing.T, path string, old []byte) { require.NoError(t, os.WriteFile(path, old, 0o600)) }},
		{"truncated", func(t *testing.T, path string, old []byte) { require.NoError(t, os.Truncate(path, 0)) }},
		{"removed", func(t *testing.T, path string, old []byte) {
			if filepath.Base(path) != "guard" {
				require.NoError(t, os.Remove(path))
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			b, err := openBounded(t, dir, Options{})
			require.NoError(t, err)
			first := grant(t, b, "a")
			grant(t, b, "b")
			oldA, err := os.ReadFile(lockPath(dir, "a"))
			require.NoError(t, err)
			oldGuard, err := os.ReadFile(filepath.Join(dir, "guard"))
			require.NoError(t, err)
			// Raise the floor with b's token by sweeping it.
			b.opts.IdleTTL = time.Nanosecond
			ageFile(t, lockPath(dir, "b"))
			require.Positive(t, b.Sweep())
			require.NoFileExists(t, lockPath(dir, "b"))
			var high uint64
			for range 5 {
				high = max(high, grant(t, b, "a"), grant(t, b, "b"))
			}
			require.Greater(t, high, first)
			require.NoError(t, b.Close())

			c.rollback(t, lockPath(dir, "a"), oldA)
			c.rollback(t, lockPath(dir, "b"), nil)
			c.rollback(t, filepath.Join(dir, "guard"), oldGuard)

			b2, err := openBounded(t, dir, Options{})
			require.NoError(t, err)
			for _, name := range []string{"a", "b", "new"} {
				tok := grant(t, b2, name)
				assert.Greater(t, tok, high, "token of %q after the rollback", name)
			}
			assert.Equal(t, b.Epoch()+1, b2.Epoch())
		})
	}
}

// The epoch file: empty or corrupt fails Open with ErrCorruptEpoch (never
// read as 0); removed, it is recomputed above the highest recorded token;
// rolled back (it cannot be, being fsynced, but by hand), the records
// still keep tokens increasing.
func TestEpochFile(t *testing.T) {
	setup := func(t *testing.T) (dir string, high uint64, oldEpoch []byte) {
		dir = t.TempDir()
		for range 3 {
			b, err := openBounded(t, dir, Options{})
			require.NoError(t, err)
			if oldEpoch == nil {
				oldEpoch, err = os.ReadFile(filepath.Join(dir, "epoch"))
				require.NoError(t, err)
			}
			high = max(high, grant(t, b, "a"))
			require.NoError(t, b.Close())
		}
		return dir, high, oldEpoch
	}
	for _, bad := range []string{"", "lockfs1 epoch=garbage\n", "lockfs1 epoch=000000"} {
		t.Run("corrupt "+bad, func(t *testing.T) {
			dir, _, _ := setup(t)
			require.NoError(t, os.WriteFile(filepath.Join(dir, "epoch"), []byte(bad), 0o600))
			_, err := openBounded(t, dir, Options{})
			require.ErrorIs(t, err, ErrCorruptEpoch)
			assert.ErrorContains(t, err, filepath.Join(dir, "epoch"))
			t.Logf("%v", err)
		})
	}
	t.Run("removed", func(t *testing.T) {
		dir, high, _ := setup(t)
		require.NoError(t, os.Remove(filepath.Join(dir, "epoch")))
		b, err := openBounded(t, dir, Options{})
		require.NoError(t, err)
		assert.Equal(t, high>>32+1, b.Epoch())
		assert.Greater(t, grant(t, b, "a"), high)
		assert.Greater(t, grant(t, b, "other"), high)
	})
	t.Run("rolled back", func(t *testing.T) {
		dir, high, old := setup(t)
		require.NoError(t, os.WriteFile(filepath.Join(dir, "epoch"), old, 0o600))
		b, err := openBounded(t, dir, Options{})
		require.NoError(t, err)
		assert.Greater(t, grant(t, b, "a"), high)
	})
}

// Two live backends on one directory, opened at different times, have
// different epochs; a grant through the older one after a grant through
// the newer one is still higher.
func TestEpochTwoBackends(t *testing.T) {
	dir := t.TempDir()
	older, err := openBounded(t, dir, Options{})
	require.NoError(t, err)
	t1 := grant(t, older, "a")
	newer, err := openBounded(t, dir, Options{})
	require.NoError(t, err)
	require.Equal(t, older.Epoch()+1, newer.Epoch())
	t2 := grant(t, newer, "a")
	t3 := grant(t, older, "a")
	t4 := grant(t, newer, "a")
	assert.Less(t, t1, t2)
	assert.Less(t, t2, t3)
	assert.Less(t, t3, t4)
	assert.Equal(t, newer.Epoch()<<32+1, t2)
}
