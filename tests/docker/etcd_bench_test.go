package docker

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/lockfs/lockfs/internal/mountinfo"
)

const (
	// benchHandoffsEnv overrides the minimum number of handoffs measured
	// per side (default benchHandoffs; b.N if larger).
	benchHandoffsEnv = "LOCKFS_BENCH_HANDOFFS"
	// benchHoldEnv overrides how long each holder keeps the lock
	// (a Go duration; default benchHold).
	benchHoldEnv = "LOCKFS_BENCH_HOLD"

	benchHandoffs = 100
	benchHold     = 50 * time.Millisecond
	// benchRounds interleaves the two sides, so that machine noise hits
	// both alike.
	benchRounds = 4
)

// BenchmarkEtcdHandoffContainers measures the handoff of one lock name
// between two lockfs daemons in two containers (--engine etcd, one etcd
// container, one labelled Docker network), side by side in the same run
// with the same handoff through etcd's client library lock (what `etcdctl
// lock` uses): concurrency.Mutex from two sessions on two clients on the
// host, against the same etcd container.
//
// In each lockfs container a busybox shell loop takes the lock with the
// static Go client of the e2e tests (tests/e2e/lockclient, copied into the
// running containers; an open for writing, as `exec 9>M/h`), holds it for
// the hold time and releases it. The client stamps its grant right after
// open(2) returns and its release right before close(2) with
// CLOCK_MONOTONIC, one clock for every container on the kernel. The
// library side runs the same loop in two goroutines. A handoff is a
// release followed by the next grant on the other side; its latency is
// the time between the two stamps. Both loops run at once on each side,
// so with FIFO grants they alternate and every waiter queued about one
// hold time before the release it waits for.
//
// etcd serves a watch that starts at a past revision from its resync loop
// (every 100 ms); concurrency.Mutex watches its predecessor that way, so
// with a hold below 100 ms its handoff includes part of that period
// (cmd/lockfs-bench etcd measures both sides of it). Set
// LOCKFS_BENCH_HOLD=150ms to see the library without it.
//
// Reported: p50/p99 of both in ms, and the p50 of one Put from the host
// (a Raft round trip) to express the difference in. Every grant is also
// checked against the previous release: overlapping holders fail the
// benchmark. Everything started is removed at the end, also on failure.
func BenchmarkEtcdHandoffContainers(b *testing.B) {
	image := setup(b)
	want := max(b.N, benchHandoffs)
	if s := os.Getenv(benchHandoffsEnv); s != "" {
		n, err := strconv.Atoi(s)
		require.NoError(b, err, benchHandoffsEnv)
		want = max(b.N, n)
	}
	hold := benchHold
	if s := os.Getenv(benchHoldEnv); s != "" {
		d, err := time.ParseDuration(s)
		require.NoError(b, err, benchHoldEnv)
		require.Positive(b, d, benchHoldEnv)
		hold = d
	}
	// Each loop of each side runs iters per round; two loops give about
	// 2*iters-1 handoffs per round.
	iters := (want+2*benchRounds-1)/(2*benchRounds) + 1
	b.StopTimer()

	client := lockclientBinary(b)
	net := newNetwork(b, "net")
	etcd := runContainer(b, image, "etcd", onNet(net, "etcd"), nil,
		"etcdserver", "-listen-client", "http://0.0.0.0:2379", "-advertise-client", "http://etcd:2379",
		"-listen-peer", "http://127.0.0.1:2380", "-data-dir", "/tmp/etcd")
	waitFor(b, 60*time.Second, "etcd ready", func() error {
		r := dockerRun(context.Background(), "logs", etcd)
		if strings.Contains(r.stdout, "ready ") {
			return nil
		}
		return fmt.Errorf("not ready: %s%s", r.stdout, r.stderr)
	})
	ip := dockerT(b, "inspect", "--format", `{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}`, etcd)
	require.NotEmpty(b, ip, "etcd container address")
	url := "http://" + ip + ":2379"

	mount := []string{"lockfs", "mount", "--engine", "etcd", "--etcd-endpoints", "http://etcd:2379",
		"--etcd-ttl", "10s", "--log-level", "warn", "/mnt/locks"}
	daemons := [2]string{
		runContainer(b, image, "a", onNet(net, "a"), daemonFlags, mount...),
		runContainer(b, image, "b", onNet(net, "b"), daemonFlags, mount...),
	}
	for _, c := range daemons {
		benchWaitMounted(b, c, "/mnt/locks")
		dockerT(b, "cp", client, c+":/bin/lockclient")
	}

	ctx := context.Background()
	newClient := func() *clientv3.Client {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
		require.NoError(b, err, "etcd client for %s", url)
		b.Cleanup(func() { _ = cli.Close() })
		return cli
	}
	var mutexes [2]*concurrency.Mutex
	var cli *clientv3.Client
	for i := range mutexes {
		cli = newClient() // one client per side: two "hosts"
		sess, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
		require.NoError(b, err, "etcd session")
		b.Cleanup(func() { _ = sess.Close() })
		mutexes[i] = concurrency.NewMutex(sess, "/lockfs-bench-mutex/h")
	}

	// Warm up both paths: connections, the daemons' sessions, the page
	// cache of the client binary.
	_, err := containerHandoffs(ctx, daemons, 2, hold)
	require.NoError(b, err, "warm-up through the containers")
	_, err = mutexHandoffs(ctx, mutexes, 2, hold)
	require.NoError(b, err, "warm-up through the library")

	var lfs, lib handoffStats
	b.StartTimer()
	for r := range benchRounds {
		evs, err := containerHandoffs(ctx, daemons, iters, hold)
		require.NoError(b, err, "round %d through the containers", r)
		require.NoError(b, lfs.add(evs), "round %d through the containers", r)
		evs, err = mutexHandoffs(ctx, mutexes, iters, hold)
		require.NoError(b, err, "round %d through the library", r)
		require.NoError(b, lib.add(evs), "round %d through the library", r)
	}
	b.StopTimer()

	var puts []float64
	for range 200 {
		start := time.Now()
		_, err := cli.Put(ctx, "/lockfs-bench-rtt/put", "v")
		require.NoError(b, err, "put")
		puts = append(puts, float64(time.Since(start))/1e6)
	}
	slices.Sort(puts)
	put := percentile(puts, 50)

	lp50, lp99 := lfs.pct(50), lfs.pct(99)
	mp50, mp99 := lib.pct(50), lib.pct(99)
	b.Logf("handoff release->grant, holder keeps the lock %v, %d rounds interleaved; etcd single node in a container at %s", hold, benchRounds, url)
	b.Logf("%-48s %8s %8s %8s %8s %9s", "ms", "p50", "p90", "p99", "max", "handoffs")
	b.Logf("%-48s %8.3f %8.3f %8.3f %8.3f %9d (%d regrants)", "lockfs, two daemons in two containers", lp50, lfs.pct(90), lp99, lfs.pct(100), len(lfs.lat), lfs.regrants)
	b.Logf("%-48s %8.3f %8.3f %8.3f %8.3f %9d (%d regrants)", "etcd concurrency.Mutex, two sessions on the host", mp50, lib.pct(90), mp99, lib.pct(100), len(lib.lat), lib.regrants)
	b.Logf("etcd Put from the host: p50 %.3f ms; lockfs - Mutex (p50): %+.3f ms = %+.2f Put round trips", put, lp50-mp50, (lp50-mp50)/put)
	b.ReportMetric(0, "ns/op") // one op is not a handoff: suppress
	b.ReportMetric(lp50, "lockfs-p50-ms")
	b.ReportMetric(lp99, "lockfs-p99-ms")
	b.ReportMetric(mp50, "mutex-p50-ms")
	b.ReportMetric(mp99, "mutex-p99-ms")
	b.ReportMetric(put, "put-p50-ms")
}

// lockclientBinary builds the static e2e client (tests/e2e/lockclient)
// into a new directory below the run's directory and returns its path.
func lockclientBinary(b *testing.B) string {
	b.Helper()
	root, err := moduleRoot()
	require.NoError(b, err)
	dir, err := os.MkdirTemp(runDir, "lockclient-")
	require.NoError(b, err)
	b.Cleanup(func() { _ = os.RemoveAll(dir) })
	out := filepath.Join(dir, "lockclient")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./tests/e2e/lockclient")
	cmd.Dir = root
	var goflags []string
	for _, f := range strings.Fields(os.Getenv("GOFLAGS")) {
		if f != "-race" && f != "-msan" && f != "-asan" {
			goflags = append(goflags, f)
		}
	}
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS="+strings.Join(goflags, " "))
	o, err := cmd.CombinedOutput()
	require.NoError(b, err, "go build ./tests/e2e/lockclient: %s", o)
	require.NoError(b, requireStatic(out))
	return out
}

// benchWaitMounted waits until container c sees one fuse.lockfs mount at
// point.
func benchWaitMounted(b *testing.B, c, point string) {
	b.Helper()
	waitFor(b, 60*time.Second, "lockfs mounted at "+point+" in "+c, func() error {
		r := dockerRun(context.Background(), "exec", c, "cat", "/proc/self/mountinfo")
		if r.err != nil {
			return r.err
		}
		ms, err := mountinfo.Parse([]byte(r.stdout))
		if err != nil {
			return err
		}
		if n := len(lockfsMountsAt(ms, point)); n != 1 {
			return fmt.Errorf("%d fuse.lockfs mounts at %s", n, point)
		}
		return nil
	})
}

// handoffEvent is a grant or a release by one of the two sides, at a
// CLOCK_MONOTONIC time (containers) or a time since a common base (host).
type handoffEvent struct {
	side  int
	grant bool // false: release
	at    int64
}

// handoffStats collects handoff latencies (ms) over rounds.
type handoffStats struct {
	lat      []float64
	regrants int // releases followed by a grant on the same side: no handoff
}

// add checks that the events of one round are a sequence of
// non-overlapping holds (grant, release on the same side, grant, ...) and
// adds the latency of every release followed by a grant on the other side.
func (s *handoffStats) add(evs []handoffEvent) error {
	slices.SortStableFunc(evs, func(x, y handoffEvent) int {
		switch {
		case x.at < y.at:
			return -1
		case x.at > y.at:
			return 1
		}
		return 0
	})
	holder := -1
	var last *handoffEvent
	for i := range evs {
		e := &evs[i]
		if e.grant {
			if holder >= 0 {
				return fmt.Errorf("side %d granted at %d while side %d held the lock", e.side, e.at, holder)
			}
			holder = e.side
			if last != nil {
				if last.side != e.side {
					s.lat = append(s.lat, float64(e.at-last.at)/1e6)
				} else {
					s.regrants++
				}
			}
			continue
		}
		if holder != e.side {
			return fmt.Errorf("side %d released at %d while side %d held the lock", e.side, e.at, holder)
		}
		holder, last = -1, e
	}
	return nil
}

// pct returns the p-th percentile of the latencies (ms), NaN if none.
func (s *handoffStats) pct(p float64) float64 {
	l := slices.Clone(s.lat)
	slices.Sort(l)
	return percentile(l, p)
}

// percentile returns the p-th percentile (nearest rank) of sorted xs, NaN
// if xs is empty.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(p/100*float64(len(xs)))) - 1
	return xs[min(max(i, 0), len(xs)-1)]
}

// handoffScript is the busybox sh loop of one lockfs container: iters
// times, lockclient opens path for writing (as `exec 9>path`), the shell
// prints "granted MONO" once it has, keeps the lock for hold, asks the
// client to close and prints "closed MONO" (MONO taken right before
// close(2)). Fifos connect the shell to the client. On a failure it prints
// "fail ..." and exits 1.
func handoffScript(path string, iters int, hold time.Duration) string {
	return fmt.Sprintf(`d=$(mktemp -d); mkfifo $d/in $d/out || exit 1
i=0
while [ $i -lt %[2]d ]; do
  GODEBUG=asyncpreemptoff=1 lockclient %[1]s <$d/in >$d/out 2>$d/err &
  exec 3>$d/in 4<$d/out
  read ev a b <&4 && [ "$ev" = start ] || { echo "fail start $ev $a $(cat $d/err)"; exit 1; }
  read ev a b <&4 && [ "$ev" = granted ] || { echo "fail open $ev $a $(cat $d/err)"; exit 1; }
  echo "granted $a"
  sleep %[3]s
  echo close >&3
  read ev a b <&4 && [ "$ev" = closed ] || { echo "fail close $ev $a $(cat $d/err)"; exit 1; }
  echo "closed $a"
  exec 3>&- 4<&-
  wait $! || { echo "fail exit $? $(cat $d/err)"; exit 1; }
  i=$((i+1))
done
rm -rf $d
`, path, iters, strconv.FormatFloat(hold.Seconds(), 'f', -1, 64))
}

// containerHandoffs runs handoffScript in both lockfs containers at once
// on /mnt/locks/h and returns their events.
func containerHandoffs(ctx context.Context, containers [2]string, iters int, hold time.Duration) ([]handoffEvent, error) {
	script := handoffScript("/mnt/locks/h", iters, hold)
	var wg sync.WaitGroup
	var res [2]result
	for i, c := range containers {
		wg.Go(func() { res[i] = dockerRun(ctx, "exec", c, "sh", "-c", script) })
	}
	wg.Wait()
	var evs []handoffEvent
	for i, r := range res {
		if r.err != nil {
			return nil, fmt.Errorf("handoff loop in %s: %w; output: %s", containers[i], r.err, r.stdout)
		}
		sc := bufio.NewScanner(strings.NewReader(r.stdout))
		for sc.Scan() {
			kind, at, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
			if kind == "" {
				continue
			}
			ns, err := strconv.ParseInt(at, 10, 64)
			if err != nil || (kind != "granted" && kind != "closed") {
				return nil, fmt.Errorf("handoff loop in %s: bad line %q", containers[i], sc.Text())
			}
			evs = append(evs, handoffEvent{side: i, grant: kind == "granted", at: ns})
		}
	}
	if n := len(evs); n != 4*iters {
		return nil, fmt.Errorf("handoff loops: %d events, want %d", n, 4*iters)
	}
	return evs, nil
}

// mutexHandoffs runs the loop of handoffScript through etcd's library
// lock: two goroutines, one per mutex (session), each iters times Lock,
// hold, Unlock. It returns their events.
func mutexHandoffs(ctx context.Context, mutexes [2]*concurrency.Mutex, iters int, hold time.Duration) ([]handoffEvent, error) {
	base := time.Now()
	var wg sync.WaitGroup
	var evs [2][]handoffEvent
	var errs [2]error
	for i, m := range mutexes {
		wg.Go(func() {
			for range iters {
				if err := m.Lock(ctx); err != nil {
					errs[i] = fmt.Errorf("mutex %d: lock: %w", i, err)
					return
				}
				evs[i] = append(evs[i], handoffEvent{side: i, grant: true, at: int64(time.Since(base))})
				time.Sleep(hold)
				evs[i] = append(evs[i], handoffEvent{side: i, at: int64(time.Since(base))})
				if err := m.Unlock(ctx); err != nil {
					errs[i] = fmt.Errorf("mutex %d: unlock: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return append(evs[0], evs[1]...), nil
}
