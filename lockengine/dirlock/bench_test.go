package dirlock_test

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/dirlock"
)

// openBenchQueue opens a Queue over a dir backend in a fresh directory,
// without a sweeper; the benchmark's cleanup closes it.
func openBenchQueue(b *testing.B) (string, *lockengine.Queue) {
	dir := b.TempDir()
	be, err := dirlock.Open(dir, dirlock.Options{SweepInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	q := lockengine.NewQueue(be, lockengine.QueueOptions{})
	b.Cleanup(func() { _ = q.Close() })
	return dir, q
}

// BenchmarkUncontended compares an uncontended exclusive Acquire+Release
// through a Queue over the dir backend with the bare system calls a
// caller would make without it, on a file in the same directory.
func BenchmarkUncontended(b *testing.B) {
	b.Run("queue", func(b *testing.B) {
		_, q := openBenchQueue(b)
		ctx := context.Background()
		for b.Loop() {
			l, err := q.Acquire(ctx, "x", lockengine.Exclusive)
			if err != nil {
				b.Fatal(err)
			}
			if err := l.Release(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("bare-flock", func(b *testing.B) {
		dir, _ := openBenchQueue(b)
		path := filepath.Join(dir, "bare")
		for b.Loop() {
			fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
			if err != nil {
				b.Fatal(err)
			}
			if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
				b.Fatal(err)
			}
			if err := unix.Flock(fd, unix.LOCK_UN); err != nil {
				b.Fatal(err)
			}
			if err := unix.Close(fd); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkNested compares an uncontended exclusive Acquire+Release of a
// top-level name with one of a name four components deep (the
// filesystem-level figure is lockfs-bench's), with the idle-descriptor cache
// (repeated acquisitions of one name) and without it (a new name every
// time, so every op creates and opens a lock file).
func BenchmarkNested(b *testing.B) {
	for _, c := range []struct{ name, dir string }{{"top", ""}, {"nested", "a/b/c"}} {
		for _, fresh := range []bool{false, true} {
			sub := c.name
			if fresh {
				sub += "-new-names"
			}
			b.Run(sub, func(b *testing.B) {
				_, q := openBenchQueue(b)
				ctx := context.Background()
				if c.dir != "" {
					for _, d := range []string{"a", "a/b", "a/b/c"} {
						if err := q.Mkdir(ctx, d, lockengine.DirAttr{Mode: 0o755}); err != nil {
							b.Fatal(err)
						}
					}
				}
				i := 0
				for b.Loop() {
					name := "x"
					if fresh {
						name = "x" + strconv.Itoa(i)
						i++
					}
					l, err := q.Acquire(ctx, lockengine.JoinName(c.dir, name), lockengine.Exclusive)
					if err != nil {
						b.Fatal(err)
					}
					if err := l.Release(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkHeldNames holds heldNames names at once through one Queue and
// reports what each costs: B/name of heap (HeapAlloc after a GC, against
// before) and fds/name (open descriptors). An op is acquiring all of them
// in a fresh directory through a fresh Queue (set up and closed untimed),
// so every op pays for new lock files and new entries alike.
func BenchmarkHeldNames(b *testing.B) {
	const heldNames = 10000
	ctx := context.Background()
	names := make([]string, heldNames)
	for i := range names {
		names[i] = "name-" + strconv.Itoa(i)
	}
	leases := make([]*lockengine.Lease, 0, heldNames)
	var bytes, fds float64
	for b.Loop() {
		b.StopTimer()
		be, err := dirlock.Open(b.TempDir(), dirlock.Options{SweepInterval: -1})
		if err != nil {
			b.Fatal(err)
		}
		q := lockengine.NewQueue(be, lockengine.QueueOptions{})
		heapBefore, fdsBefore := heapAlloc(), openFds(b)
		b.StartTimer()
		for _, name := range names {
			l, err := q.Acquire(ctx, name, lockengine.Exclusive)
			if err != nil {
				b.Fatal(err)
			}
			leases = append(leases, l)
		}
		b.StopTimer()
		bytes += float64(int64(heapAlloc()) - int64(heapBefore))
		fds += float64(openFds(b) - fdsBefore)
		runtime.KeepAlive(leases)
		if err := q.Close(); err != nil {
			b.Fatal(err)
		}
		clear(leases)
		leases = leases[:0]
		b.StartTimer()
	}
	b.ReportMetric(bytes/float64(b.N)/heldNames, "B/name")
	b.ReportMetric(fds/float64(b.N)/heldNames, "fds/name")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/heldNames, "ns/name")
}

func heapAlloc() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func openFds(b *testing.B) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		b.Fatal(err)
	}
	return len(ents)
}
