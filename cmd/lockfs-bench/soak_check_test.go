package main

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The checker flags what it must and accepts what it may. In the events,
// a client's log is named "#i" (the i-th log of the case).
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
		}, []soakEvent{{kind: "client-kill", t: 20, pid: 1, log: "#0"}}, ""},
		// Regression: the chaos loop chose a holder and took the time, the
		// holder released, began again and was granted again before the
		// SIGKILL landed. Matching the kill by pid and time (the first
		// kill at or after the ENTER) found none, stretched the grant to
		// the end of the run and made every later holder an overlap.
		{"client killed after a new grant", []string{
			"BEGIN n00 open 0 0\nENTER n00 ex 5 10 1 open 0\nEXIT n00 ex 5 15\nBEGIN n00 open 16 0\nENTER n00 ex 7 18 1 open 0\n",
			"BEGIN n00 open 0 1\nENTER n00 ex 8 40 2 open 1\nEXIT n00 ex 8 50\n",
		}, []soakEvent{{kind: "client-kill", t: 12, pid: 1, log: "#0"}}, ""},
		{"client killed after a new attempt began", []string{
			"BEGIN n00 open 0 0\nENTER n00 ex 5 10 1 open 0\nEXIT n00 ex 5 15\nBEGIN n00 open 16 0\n",
		}, []soakEvent{{kind: "client-kill", t: 12, pid: 1, log: "#0"}}, ""},
		// A pid is reused: the kill of the client that had pid 1 later
		// does not end the grant of the earlier one, still held at the
		// end, which overlaps a third client's.
		{"pid reused: another process's kill", []string{
			"BEGIN n00 open 0 0\nENTER n00 ex 5 10 1 open 0\n",
			"BEGIN n01 open 0 0\nENTER n01 ex 1 500 1 open 0\n",
			"BEGIN n00 open 0 1\nENTER n00 ex 6 600 3 open 1\nEXIT n00 ex 6 650\n",
		}, []soakEvent{{kind: "client-kill", t: 550, pid: 1, log: "#1"}}, "overlap on n00"},
		{"pid reused, both killed", []string{
			"BEGIN n00 open 0 0\nENTER n00 ex 5 10 1 open 0\n",
			"BEGIN n01 open 0 0\nENTER n01 ex 1 500 1 open 0\n",
			"BEGIN n00 open 0 1\nENTER n00 ex 6 600 3 open 1\nEXIT n00 ex 6 650\n",
		}, []soakEvent{
			{kind: "client-kill", t: 20, pid: 1, log: "#0"},
			{kind: "client-kill", t: 550, pid: 1, log: "#1"},
		}, ""},
		{"holder at the end", []string{
			"BEGIN n00 open 0 0\nENTER n00 ex 5 10 1 open 0\n",
			"BEGIN n00 open 0 1\nENTER n00 ex 6 30 2 open 1\nEXIT n00 ex 6 50\n",
		}, nil, "overlap on n00"},
		{"token decreases", []string{
			"BEGIN n00 open 0 0\nENTER n00 ex 6 10 1 open 0\nEXIT n00 ex 6 20\n",
			"BEGIN n00 open 0 0\nENTER n00 ex 5 30 2 open 0\nEXIT n00 ex 5 40\n",
		}, nil, "token not increasing"},
		{"no outcome", []string{"BEGIN n00 open 0 0\n"}, nil, "no outcome"},
		{"no outcome, killed", []string{"BEGIN n00 open 0 0\n"}, []soakEvent{{kind: "client-kill", t: 20, pid: 1, log: "#0"}}, ""},
		{"client died on its own", []string{"BEGIN n00 open 0 0\nFAIL open EAGAIN 5 0\n"},
			[]soakEvent{{kind: "client-exit", t: 20, pid: 1, log: "#0", name: "exit status 2"}}, "exited before the end, not killed by the chaos loop: exit status 2"},
		{"client killed by the chaos loop exits", []string{"BEGIN n00 open 0 0\n"},
			[]soakEvent{{kind: "client-kill", t: 20, pid: 1, log: "#0"}, {kind: "client-exit", t: 21, pid: 1, log: "#0", name: "signal: killed"}}, ""},
		{"no outcome, another log killed", []string{"BEGIN n00 open 0 0\n", "BEGIN n00 open 0 0\nFAIL open EAGAIN 5 0\n"},
			[]soakEvent{{kind: "client-kill", t: 20, pid: 1, log: "#1"}}, "no outcome"},
		// ENOENT is documented only while the attempt's own mount had no
		// daemon: from a SIGKILL (or the final stop) to the next start.
		{"ENOENT while its daemon was down", []string{"BEGIN n00 open 100 1\nFAIL open ENOENT 120 1\n"},
			[]soakEvent{{kind: "daemon-up", t: 1, slot: 1}, {kind: "daemon-kill", t: 90, slot: 1}, {kind: "daemon-up", t: 110, slot: 1}}, ""},
		{"ENOENT, daemon killed during the attempt", []string{"BEGIN n00 open 100 1\nFAIL open ENOENT 120 1\n"},
			[]soakEvent{{kind: "daemon-kill", t: 115, slot: 1}, {kind: "daemon-up", t: 130, slot: 1}}, ""},
		{"ENOENT after the final stop", []string{"BEGIN n00 open 100 1\nFAIL open ENOENT 120 1\n"},
			[]soakEvent{{kind: "daemon-stop", t: 118, slot: 1}}, ""},
		{"ENOENT after the restart", []string{"BEGIN n00 open 100 1\nFAIL open ENOENT 120 1\n"},
			[]soakEvent{{kind: "daemon-kill", t: 10, slot: 1}, {kind: "daemon-up", t: 50, slot: 1}}, "ENOENT from d1"},
		{"ENOENT while another daemon was down", []string{"BEGIN n00 open 100 1\nFAIL open ENOENT 120 1\n"},
			[]soakEvent{{kind: "daemon-kill", t: 90, slot: 0}, {kind: "daemon-up", t: 130, slot: 0}}, "ENOENT from d1"},
		{"ENOENT, no daemon ever down", []string{"BEGIN n00 shared 100 0\nFAIL shared ENOENT 120 0\n"}, nil, "ENOENT from d0"},
		{"final waiter", []string{"BEGIN n00 final 0 0\nENTER n00 ex 9 900 1 final 0\nLOST n00 ex 9 960 ECONNABORTED\nEXIT n00 ex 9 950\n"}, nil, ""},
		{"client violation", []string{"BEGIN n00 open 0 0\nVIOL open on m: undocumented error EPERM\n"}, nil, "undocumented"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			var paths []string
			for i, l := range c.logs {
				p := filepath.Join(dir, "c"+strconv.Itoa(i)+".log")
				if err := os.WriteFile(p, []byte(l), 0o644); err != nil {
					t.Fatal(err)
				}
				paths = append(paths, p)
			}
			events := slices.Clone(c.events)
			for i := range events {
				if n, ok := strings.CutPrefix(events[i].log, "#"); ok {
					k, _ := strconv.Atoi(n)
					events[i].log = paths[k]
				}
			}
			rep := checkSoak(paths, events, 0, 1000)
			switch {
			case c.want == "" && len(rep.violations) > 0:
				t.Fatalf("violations: %q", rep.violations)
			case c.want != "" && (len(rep.violations) == 0 || !strings.Contains(rep.violations[0], c.want)):
				t.Fatalf("want a violation %q, got %q", c.want, rep.violations)
			}
			if c.name == "final waiter" && len(rep.waits) != 0 {
				t.Fatalf("a final waiter's wait counted among the blocking interfaces': %v", rep.waits)
			}
		})
	}
}
