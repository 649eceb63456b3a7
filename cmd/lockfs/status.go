package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/fsnode"
)

const statusUsage = `Usage: lockfs status [--json] [PATH]

Lists the locks held or waited on in the lockfs mount PATH (default
$LOCKFS_MOUNT, else /mnt/locks), or below the lock directory PATH of a
mount, at any depth: state, mode, fencing token, holders (uid, gid, pid,
mode, grant time) and waiters. Names are full paths from the mount's root
(team/app/deploy). It only lists directories and reads the user.lockfs.*
extended attributes, so it takes no lock, never waits for one, and works for
every user who can read the directories. PID is 0 for a holder that is not
visible from the daemon's pid namespace.

A lock with more holders than its attribute lists (thousands of shared
holders) shows the ones listed and a row "... N more holders". Names with
control characters, Unicode bidi controls or invalid UTF-8 (and names with
spaces or double quotes) are shown quoted, as in Go. A lock whose attributes
cannot be read, or a lock directory below PATH that cannot be listed, is
shown with state "error" and the error; the others are still listed.

  --json   one JSON document: {"mount": ..., "locks": [...]}; a lock
           carries "holders_omitted": N when N holders were not listed,
           and "error" when its attributes could not be read

Exit status: 0 success (also when some locks could not be read), 1 error
(not a lockfs mount, PATH cannot be listed), 2 usage error.
`

// statusHolder is one line of user.lockfs.holders.
type statusHolder struct {
	UID     uint32 `json:"uid"`
	GID     uint32 `json:"gid"`
	PID     uint32 `json:"pid"`
	Mode    string `json:"mode"`
	Token   uint64 `json:"token"`
	Granted string `json:"granted"`
	Via     string `json:"via"`
	Lost    bool   `json:"lost,omitempty"`
}

// statusLock is one lock of 'lockfs status'.
type statusLock struct {
	Name      string         `json:"name"`
	State     string         `json:"state"`
	Mode      string         `json:"mode,omitempty"`
	Token     uint64         `json:"token"`
	Waiters   int            `json:"waiters"`
	Acquired  string         `json:"acquired,omitempty"`
	Heartbeat string         `json:"heartbeat,omitempty"`
	Cause     string         `json:"cause,omitempty"`
	Holders   []statusHolder `json:"holders"`
	// HoldersOmitted is how many holders user.lockfs.holders left out
	// (its "... N more" line).
	HoldersOmitted int `json:"holders_omitted,omitempty"`
	// Error says why the lock's attributes could not be read; the other
	// fields are then empty.
	Error string `json:"error,omitempty"`
}

// stateError is the State of a lock whose attributes could not be read.
const stateError = "error"

// statusReport is the --json document.
type statusReport struct {
	Mount string       `json:"mount"`
	Locks []statusLock `json:"locks"`
}

// runStatus implements 'lockfs status'.
func runStatus(args []string, stdout, stderr io.Writer) error {
	mnt, asJSON, err := parseStatusArgs(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, statusUsage)
		return nil
	}
	if err != nil {
		return err
	}
	if err := checkLockfsDir(mnt); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	rep, err := readStatus(mnt)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	writeStatusTable(stdout, rep)
	return nil
}

// parseStatusArgs parses the command line of 'lockfs status': the path
// (a mountpoint or a lock directory in one; defaulted) and --json. It returns flag.ErrHelp for --help,
// else a usageError.
func parseStatusArgs(args []string) (mnt string, asJSON bool, err error) {
	fl := flag.NewFlagSet("status", flag.ContinueOnError)
	fl.SetOutput(io.Discard)
	fl.BoolVar(&asJSON, "json", false, "")
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return "", false, err
		}
		return "", false, usageErrorf("status: %w (see 'lockfs status --help')", err)
	}
	if fl.NArg() > 1 {
		return "", false, usageErrorf("status: want at most one PATH (see 'lockfs status --help')")
	}
	return mountOrDefault(fl.Arg(0)), asJSON, nil
}

// readStatus lists the lock directory dir (a mount's root or a directory
// in it) and every lock directory below it, and reads every name's
// attributes; names are full paths from the mount's root (see
// lockPrefix). Names that became free in between are left out. A name
// whose attributes cannot be read, or a directory below dir that cannot
// be listed, is reported with State "error" and the error, and the
// listing goes on; only failing to list dir is an error.
func readStatus(dir string) (statusReport, error) {
	rep := statusReport{Mount: dir, Locks: []statusLock{}}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return rep, err
	}
	walkStatus(&rep, dir, lockPrefix(dir), ents)
	slices.SortFunc(rep.Locks, func(a, b statusLock) int { return strings.Compare(a.Name, b.Name) })
	return rep, nil
}

// walkStatus adds the locks of the lock directory dir, whose entries are
// ents and whose path from the mount's root is prefix, and of the
// directories below it, to rep.
func walkStatus(rep *statusReport, dir, prefix string, ents []os.DirEntry) {
	for _, de := range ents {
		path := filepath.Join(dir, de.Name())
		name := de.Name()
		if prefix != "" {
			name = prefix + "/" + name
		}
		if de.IsDir() {
			sub, err := os.ReadDir(path)
			if err != nil {
				rep.Locks = append(rep.Locks, statusLock{Name: name, State: stateError,
					Holders: []statusHolder{}, Error: err.Error()})
			}
			walkStatus(rep, path, name, sub)
			continue
		}
		lk, err := readLockStatus(path)
		if err != nil {
			rep.Locks = append(rep.Locks, statusLock{Name: name, State: stateError,
				Holders: []statusHolder{}, Error: err.Error()})
			continue
		}
		if lk.State == "free" || lk.State == "" {
			continue
		}
		lk.Name = name
		rep.Locks = append(rep.Locks, lk)
	}
}

// lockPrefix returns the path of directory dir from the root of the mount
// it is in ("" for the root itself, or when it cannot be told; see
// mountRoot).
func lockPrefix(dir string) string {
	_, rel, ok := mountRoot(dir)
	if !ok {
		return ""
	}
	return rel
}

// mountRoot returns the root of the mount that directory dir is in (the
// highest ancestor of dir, symlinks resolved, on the same device) and
// dir's path from it ("" for the root itself); ok is false when dir
// cannot be examined. In a container given a lock directory of the host's
// mount (a bind mount), the root is the container's mountpoint.
func mountRoot(dir string) (root, rel string, ok bool) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", "", false
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	var st unix.Stat_t
	if err := unix.Stat(abs, &st); err != nil {
		return "", "", false
	}
	root = abs
	for root != "/" {
		parent := filepath.Dir(root)
		var pst unix.Stat_t
		if err := unix.Stat(parent, &pst); err != nil || pst.Dev != st.Dev {
			break
		}
		root = parent
	}
	rel, err = filepath.Rel(root, abs)
	if err != nil {
		return "", "", false
	}
	if rel == "." {
		rel = ""
	}
	return root, rel, true
}

// getxattr reads one attribute of path; "" when it does not exist.
func getxattr(path, attr string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(path, attr, buf)
		switch {
		case err == nil:
			return string(buf[:n]), nil
		case errors.Is(err, unix.ENODATA):
			return "", nil
		case errors.Is(err, unix.ERANGE):
			sz, err := unix.Lgetxattr(path, attr, nil)
			if err != nil {
				return "", fmt.Errorf("%s: getxattr %s: %w", path, attr, err)
			}
			buf = make([]byte, sz+256)
		default:
			return "", fmt.Errorf("%s: getxattr %s: %w", path, attr, err)
		}
	}
}

func readLockStatus(path string) (statusLock, error) {
	var lk statusLock
	get := func(attr string, dst *string) error {
		v, err := getxattr(path, attr)
		*dst = v
		return err
	}
	var token, waiters, holders string
	for _, a := range []struct {
		attr string
		dst  *string
	}{
		{fsnode.XattrState, &lk.State}, {fsnode.XattrMode, &lk.Mode}, {fsnode.XattrToken, &token},
		{fsnode.XattrWaiters, &waiters}, {fsnode.XattrAcquired, &lk.Acquired},
		{fsnode.XattrHeartbeat, &lk.Heartbeat}, {fsnode.XattrHolders, &holders}, {fsnode.XattrCause, &lk.Cause},
	} {
		if err := get(a.attr, a.dst); err != nil {
			return lk, err
		}
	}
	lk.Token, _ = strconv.ParseUint(token, 10, 64)
	lk.Waiters, _ = strconv.Atoi(waiters)
	lk.Holders = parseHolders(holders)
	lk.HoldersOmitted = holdersOmitted(holders)
	return lk, nil
}

// holdersOmitted returns how many holders user.lockfs.holders s left out:
// N of its last line "... N more" (fsnode.HoldersMore), else 0.
func holdersOmitted(s string) int {
	s = strings.TrimSuffix(s, "\n")
	var n int
	if _, err := fmt.Sscanf(s[strings.LastIndexByte(s, '\n')+1:], fsnode.HoldersMore, &n); err != nil || n < 0 {
		return 0
	}
	return n
}

// parseHolders parses the holder lines of user.lockfs.holders (the
// "... N more" line is not one: see holdersOmitted).
func parseHolders(s string) []statusHolder {
	out := []statusHolder{}
	for line := range strings.SplitSeq(s, "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		var h statusHolder
		u, _ := strconv.ParseUint(f[0], 10, 32)
		g, _ := strconv.ParseUint(f[1], 10, 32)
		p, _ := strconv.ParseUint(f[2], 10, 32)
		h.UID, h.GID, h.PID = uint32(u), uint32(g), uint32(p)
		h.Mode = f[3]
		h.Token, _ = strconv.ParseUint(f[4], 10, 64)
		h.Granted = f[5]
		h.Via = "-"
		for _, x := range f[6:] {
			if x == "lost" {
				h.Lost = true
			} else {
				h.Via = x
			}
		}
		out = append(out, h)
	}
	return out
}

// needsQuote reports whether a lock name is shown quoted in the table: it
// is not valid UTF-8, or has a control character (C0, DEL, C1), a Unicode
// bidi control (which could reorder what the terminal shows), a space
// or a double quote (which would make the columns ambiguous).
func needsQuote(name string) bool {
	if !utf8.ValidString(name) {
		return true
	}
	return strings.ContainsFunc(name, func(r rune) bool {
		switch {
		case r <= ' ', r == '"', r >= 0x7f && r <= 0x9f:
			return true
		case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069,
			r == 0x200e, r == 0x200f, r == 0x061c:
			return true
		}
		return false
	})
}

// displayName is name as the table shows it (see needsQuote).
func displayName(name string) string {
	if needsQuote(name) {
		return strconv.Quote(name)
	}
	return name
}

// writeStatusTable prints one row per holder (a lock with only waiters gets
// one row with "-" holder columns), then "... N more holders" when the
// attribute left some out. A lock that could not be read gets one row with
// state "error" and the error after the columns.
func writeStatusTable(w io.Writer, rep statusReport) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tMODE\tTOKEN\tWAITERS\tUID\tGID\tPID\tVIA\tSINCE")
	for _, lk := range rep.Locks {
		lk.Name = displayName(lk.Name)
		if lk.Error != "" {
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\t-\t-\t-\t-\t%s\n", lk.Name, stateError, strconv.Quote(lk.Error))
			continue
		}
		mode := lk.Mode
		if mode == "" {
			mode = "-"
		}
		if len(lk.Holders) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t-\t-\t-\t-\t-\n", lk.Name, lk.State, mode, lk.Token, lk.Waiters)
			continue
		}
		for _, h := range lk.Holders {
			state := lk.State
			if h.Lost {
				state = "lost"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", lk.Name, state, h.Mode, h.Token, lk.Waiters,
				h.UID, h.GID, h.PID, h.Via, h.Granted)
		}
		if lk.HoldersOmitted > 0 {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t... %d more holders\n", lk.Name, lk.State, mode, lk.Token, lk.Waiters,
				lk.HoldersOmitted)
		}
	}
	_ = tw.Flush()
}
