package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The checker flags what it must and accepts what it may.
func TestCheckSoak(t *testing.T) {
	cases := []struct {
		name   string
		logs   []string
		events []soakEvent
		want   string // substring of the first violation, "" = none
	}{
		{"disjoint", []string{
			"BEGIN n00 open 0 0\nENTER n00 ex 5 10 1 open 0\nEXIT n00 ex 5 20\n",
			"BEGIN n00 open 0 0\nENTER n00 ex 6 30 2 open 0\nEXIT n00 ex 6 40\n",
		}, nil, ""},
		{"overlap", []string{
			"BEGIN n00 open 0 0\nENTER n00 ex 5 10 1 open 0\nEXIT n00 ex 5 40\n",
			"BEGIN n00 open 0 0\nENTER n00 ex 6 30 2 open 0\nEXIT n00 ex 6 50\n",
		}, nil, "overlap on n00"},
		{"exclusive over shared", []string{
			"BEGIN n00 shared 0 0\nENTER n00 sh 5 10 1 shared 0\nEXIT n00 sh 5 40\n",
			"BEGIN n00 open 0 0\nENTER n00 ex 6 30 2 open 0\nEXIT n00 ex 6 50\n",
		}, nil, "overlap on n00"},
		{"shared overlap ok", []string{
			"BEGIN n00 shared 0 0\nENTER n00 sh 5 10 1 shared 0\nEXIT n00 sh 5 40\n",
			"BEGIN n00 shared 0 0\nENTER n00 sh 5 30 2 shared 1\nEXIT n00 sh 5 50\n",
		}, nil, ""},
		{"lost, fenced", []string{
			"BEGIN n00 open 0 0\nENTER n00 ex 5 10 1 open 0\nLOST n00 ex 5 45 EIO\nEXIT n00 ex 5 46\n",
			"BEGIN n00 open 0 0\nENTER n00 ex 6 30 2 open 0\nEXIT n00 ex 6 50\n",
		}, nil, ""},
		{"lost, not fenced", []string{
			"BEGIN n00 open 0 0\nENTER n00 ex 7 10 1 open 0\nLOST n00 ex 7 45 EIO\nEXIT n00 ex 7 46\n",
			"BEGIN n00 open 0 0\nENTER n00 ex 6 30 2 open 0\nEXIT n00 ex 6 50\n",
		}, nil, "overlap on n00"},
		{"daemon killed", []string{
			"BEGIN n00 open 0 0\nENTER n00 ex 5 10 1 open 0\nEXIT n00 ex 5 40\n",
			"BEGIN n00 open 0 1\nENTER n00 ex 6 30 2 open 1\nEXIT n00 ex 6 50\n",
		}, []soakEvent{{kind: "daemon-kill", t: 20, slot: 0}}, ""},
		{"client killed", []string{
			"BEGIN n00 open 0 0\nENTER n00 ex 5 10 1 open 0\n",
			"BEGIN n00 open 0 1\nENTER n00 ex 6 30 2 open 1\nEXIT n00 ex 6 50\n",
		}, []soakEvent{{kind: "client-kill", t: 20, pid: 1}}, ""},
		{"client killed, its pid reused and killed later", []string{
			"BEGIN n00 open 0 0\nENTER n00 ex 5 10 1 open 0\n",
			"BEGIN n00 open 0 1\nENTER n00 ex 6 30 2 open 1\nEXIT n00 ex 6 50\n",
		}, []soakEvent{{kind: "client-kill", t: 5, pid: 1}, {kind: "client-kill", t: 20, pid: 1}, {kind: "client-kill", t: 900, pid: 1}}, ""},
		{"holder at the end", []string{
			"BEGIN n00 open 0 0\nENTER n00 ex 5 10 1 open 0\n",
			"BEGIN n00 open 0 1\nENTER n00 ex 6 30 2 open 1\nEXIT n00 ex 6 50\n",
		}, nil, "overlap on n00"},
		{"token decreases", []string{
			"BEGIN n00 open 0 0\nENTER n00 ex 6 10 1 open 0\nEXIT n00 ex 6 20\n",
			"BEGIN n00 open 0 0\nENTER n00 ex 5 30 2 open 0\nEXIT n00 ex 5 40\n",
		}, nil, "token not increasing"},
		{"no outcome", []string{"BEGIN n00 open 0 0\n"}, nil, "no outcome"},
		{"no outcome, killed", []string{"BEGIN n00 open 0 0\n"}, []soakEvent{{kind: "client-kill", t: 20, pid: 1}}, ""},
		{"client violation", []string{"BEGIN n00 open 0 0\nVIOL open on m: undocumented error EPERM\n"}, nil, "undocumented"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			var paths []string
			pids := map[string]int{}
			for i, l := range c.logs {
				p := filepath.Join(dir, "c"+strconv.Itoa(i)+".log")
				if err := os.WriteFile(p, []byte(l), 0o644); err != nil {
					t.Fatal(err)
				}
				paths = append(paths, p)
				pids[p] = i + 1
			}
			rep := checkSoak(paths, pids, c.events, 0, 1000)
			switch {
			case c.want == "" && len(rep.violations) > 0:
				t.Fatalf("violations: %q", rep.violations)
			case c.want != "" && (len(rep.violations) == 0 || !strings.Contains(rep.violations[0], c.want)):
				t.Fatalf("want a violation %q, got %q", c.want, rep.violations)
			}
		})
	}
}
