package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// treeCase is one path the tree part opens: label is how it is printed,
// path is where it is on the mount.
type treeCase struct{ label, path string }

// treeOpens is part tree (issue 14): does a name's depth in the lock
// directory tree, or the size of its directory's parent, change what an
// open costs? It mounts one lockfs, makes a/b/c, a c.treeDepth-level chain
// d00/d01/... and c.treeWide sibling directories wide/w00000... through
// the mount, and measures open(O_WRONLY)+close of M/name, M/a/b/c/name, the
// name at the bottom of the chain and M/wide/w<middle>/name with the
// uncontended figure's interleaved rounds (see rounds); ratios are to
// M/name, per round.
//
// Warm opens find every directory in the kernel's dentry cache (entries
// and attributes live --attr-timeout, 1 s by default, and a LOOKUP that
// revalidates an expired one is rare in a tight loop), so they mostly
// measure the daemon's OPEN and RELEASE. Two colder figures follow: the first open of
// a fresh name per op (one LOOKUP of the last component, the directories
// cached), and a second daemon on the same state directory with
// --attr-timeout 0, where the kernel looks up every component of the path
// on every open.
func (b *fsBench) treeOpens(c fsConfig) error {
	if c.treeDepth < 1 || c.treeWide < 0 {
		return fmt.Errorf("tree: -tree-depth %d, -tree-wide %d: want a depth of at least 1 and no negative width", c.treeDepth, c.treeWide)
	}
	d, err := b.startLockfs("lockfs-tree")
	if err != nil {
		return err
	}
	defer d.stop()
	cases, err := makeTree(d.mnt, c.treeDepth, c.treeWide)
	if err != nil {
		return err
	}
	specs := func(kind string, cases []treeCase) []string {
		s := make([]string, len(cases))
		for i, tc := range cases {
			s[i] = kind + ":" + tc.path
		}
		return s
	}

	fmt.Printf("tree. open(O_WRONLY)+close by depth and directory size, C client, %d rounds, interleaved in chunks of %d (medians; ratio to M/name per round):\n",
		c.rounds, c.chunk)
	warm, err := b.rounds(c, specs("w", cases)...)
	if err != nil {
		return err
	}
	printTree(fmt.Sprintf("warm, %d per case per round:", c.n), cases, warm)

	fc := c
	fc.n = max(c.n/4, c.chunk)
	fresh, err := b.rounds(fc, specs("n", cases)...)
	if err != nil {
		return err
	}
	printTree(fmt.Sprintf("first open of a fresh name per op (LOOKUP of the last component), %d per case per round:", fc.n), cases, fresh)

	// The kernel's cache off: a daemon on the same state directory (the
	// same directories) that gives entries and attributes no lifetime.
	d.stop()
	cold, err := b.startLockfsBin(b.lockfs, "lockfs-tree-cold", filepath.Join(d.dir, "state"), "--attr-timeout", "0")
	if err != nil {
		return err
	}
	defer cold.stop()
	coldCases := make([]treeCase, len(cases))
	for i, tc := range cases {
		rel, err := filepath.Rel(d.mnt, tc.path)
		if err != nil {
			return err
		}
		coldCases[i] = treeCase{tc.label, filepath.Join(cold.mnt, rel)}
	}
	cc := c
	cc.n = max(c.n/10, c.chunk)
	cc.chunk = min(c.chunk, 200)
	coldNs, err := b.rounds(cc, specs("w", coldCases)...)
	if err != nil {
		return err
	}
	printTree(fmt.Sprintf("--attr-timeout 0 (every component looked up on every open), %d per case per round:", cc.n), coldCases, coldNs)
	return nil
}

// makeTree makes, under mnt, a/b/c, a depth-level chain d00/d01/..., and
// wide directories under wide, printing progress; it returns the cases to
// measure: M/name first (the reference), then the name in each.
func makeTree(mnt string, depth, wide int) ([]treeCase, error) {
	t0 := time.Now()
	abc := filepath.Join(mnt, "a", "b", "c")
	for _, p := range []string{filepath.Join(mnt, "a"), filepath.Join(mnt, "a", "b"), abc} {
		if err := os.Mkdir(p, 0o755); err != nil {
			return nil, fmt.Errorf("tree: %w", err)
		}
	}
	deep := mnt
	for i := range depth {
		deep = filepath.Join(deep, fmt.Sprintf("d%02d", i))
		if err := os.Mkdir(deep, 0o755); err != nil {
			return nil, fmt.Errorf("tree: %w", err)
		}
	}
	fmt.Printf("tree: made a/b/c and a %d-level chain in %.2f s\n", depth, time.Since(t0).Seconds())
	wideDir := filepath.Join(mnt, "wide")
	if err := os.Mkdir(wideDir, 0o755); err != nil {
		return nil, fmt.Errorf("tree: %w", err)
	}
	t1 := time.Now()
	step := max(wide/5, 1)
	for i := range wide {
		if err := os.Mkdir(filepath.Join(wideDir, fmt.Sprintf("w%05d", i)), 0o755); err != nil {
			return nil, fmt.Errorf("tree: %w", err)
		}
		if (i+1)%step == 0 {
			fmt.Printf("tree: %d of %d directories under wide, %.1f s\n", i+1, wide, time.Since(t1).Seconds())
		}
	}
	if wide > 0 {
		fmt.Printf("tree: made %d directories under wide in %.1f s (%.0f us per mkdir)\n",
			wide, time.Since(t1).Seconds(), time.Since(t1).Seconds()*1e6/float64(wide))
	}
	deepLabel := fmt.Sprintf("M/d00/.../d%02d/name", depth-1)
	cases := []treeCase{
		{"M/name", filepath.Join(mnt, "name")},
		{"M/a/b/c/name", filepath.Join(abc, "name")},
		{deepLabel, filepath.Join(deep, "name")},
	}
	if wide > 0 {
		w := fmt.Sprintf("w%05d", wide/2)
		cases = append(cases, treeCase{"M/wide/" + w + "/name", filepath.Join(wideDir, w, "name")})
	}
	return cases, nil
}

// printTree prints one figure of the tree part: each case's median us/op
// over the rounds and its median ratio to the first case.
func printTree(title string, cases []treeCase, ns [][]float64) {
	fmt.Printf("   %s\n", title)
	for i, tc := range cases {
		var us, rs []string
		ratios := perRound(ns, i, 0)
		for k := range ns[i] {
			us = append(us, fmt.Sprintf("%.1f", ns[i][k]/1000))
			rs = append(rs, fmt.Sprintf("%.2f", ratios[k]))
		}
		fmt.Printf("     %-26s %7.1f us/op  %5.2fx  (rounds: %s; ratios %s)\n",
			tc.label, median(ns[i])/1000, median(ratios), strings.Join(us, " "), strings.Join(rs, " "))
	}
}
