package dirlock

import (
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lockfs/lockfs/lockengine"
)

// Fuzz target for the on-disk records: a lock file and the guard's floor
// record overwritten or truncated with arbitrary bytes. Run it longer with
//
//	go test -run '^$' -fuzz '^FuzzCorruptRecords$' -fuzztime 1m ./lockengine/dirlock/

// Operations on a file of the state directory, chosen by the fuzzer.
const (
	opKeep      = iota // leave the file as it is
	opOverwrite        // replace its content with the data
	opTruncate         // truncate it to len(data) bytes (at most one record); created if missing
	opOverlay          // write the data at offset 0 without truncating
)

// applyOp applies op with data to the file at path (created if missing).
func applyOp(t *testing.T, path string, op int, data []byte) {
	t.Helper()
	var err error
	switch op {
	case opOverwrite:
		err = os.WriteFile(path, data, 0o644)
	case opTruncate, opOverlay:
		var f *os.File
		if f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644); err == nil {
			if op == opTruncate {
				err = f.Truncate(int64(min(len(data), recordLen)))
			} else {
				_, err = f.WriteAt(data, 0)
			}
			err = errors.Join(err, f.Close())
		}
	}
	if err != nil {
		t.Fatalf("corrupt %s: %v", path, err)
	}
}

// parsed is the model of readRecord: what a record file says.
type parsed struct {
	n       uint64
	empty   bool // never written (or absent): use the floor
	corrupt bool
}

// parseModel reads a record the way the format is documented: empty, or
// exactly prefix, 20 decimal digits and a newline (anything after the
// first record is ignored).
func parseModel(data []byte, prefix string) parsed {
	if len(data) == 0 {
		return parsed{empty: true}
	}
	if len(data) < recordLen {
		return parsed{corrupt: true}
	}
	rec := data[:recordLen]
	digits := string(rec[len(prefix) : recordLen-1])
	if !bytes.HasPrefix(rec, []byte(prefix)) || rec[recordLen-1] != '\n' || strings.Trim(digits, "0123456789") != "" {
		return parsed{corrupt: true}
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	if err != nil {
		return parsed{corrupt: true}
	}
	return parsed{n: n}
}

// FuzzCorruptRecords seeds a name with a few exclusive grants (and maybe a
// sweep that moves its token into the guard's floor), corrupts the lock
// file and the guard as the fuzzer says, then opens a new backend on the
// directory and locks the name. The outcome must be exactly what the
// record format says: a grant with the recorded token (+1 when exclusive)
// or a clear error, never a panic or a hang. A token at or below one the
// name already had is allowed only when the fuzzer itself wrote the record
// that the backend trusts: a well-formed record with a smaller number, or
// an empty file, which is a never-used name whose token starts from the
// floor (see "Removing a lock file by hand" in docs/design.md).
func FuzzCorruptRecords(f *testing.F) {
	rec := func(prefix string, n uint64) []byte { return appendRecord(nil, prefix, n) }
	f.Add(uint8(2), uint8(opOverwrite<<1), []byte("garbage"), []byte(nil))
	f.Add(uint8(1), uint8(opOverwrite<<1), rec(tokenPrefix, 1), []byte(nil))
	f.Add(uint8(3), uint8(opOverwrite<<1), rec(tokenPrefix, math.MaxUint64), []byte(nil))
	f.Add(uint8(3), uint8(opOverwrite<<1|1<<5), rec(tokenPrefix, math.MaxUint64), []byte(nil))
	f.Add(uint8(3), uint8(opOverwrite<<1), []byte("lockfs1 token=18446744073709551616\n"), []byte(nil))
	f.Add(uint8(3), uint8(opOverwrite<<1), rec(floorPrefix, 9), []byte(nil))
	f.Add(uint8(3), uint8(opOverwrite<<1), append(rec(tokenPrefix, 7), "trailing junk"...), []byte(nil))
	f.Add(uint8(3), uint8(opOverwrite<<1), []byte("lockfs1 token=0000000000000000000+\n"), []byte(nil))
	f.Add(uint8(3), uint8(opOverwrite<<1), []byte("lockfs1 token=-0000000000000000001\n"), []byte(nil))
	f.Add(uint8(3), uint8(opOverwrite<<1), []byte("lockfs1 token=00000000000000000009"), []byte(nil))
	f.Add(uint8(2), uint8(opTruncate<<1), []byte("0123456789"), []byte(nil))
	f.Add(uint8(2), uint8(opTruncate<<1), []byte{}, []byte(nil))
	f.Add(uint8(2), uint8(opOverlay<<1), []byte("lockfs1 token=9"), []byte(nil))
	f.Add(uint8(2), uint8(1|opOverwrite<<3), []byte(nil), []byte("junk"))
	f.Add(uint8(2), uint8(1|opOverwrite<<3), []byte(nil), rec(floorPrefix, math.MaxUint64))
	f.Add(uint8(2), uint8(1|opOverwrite<<3), []byte(nil), rec(floorPrefix, 1))
	f.Add(uint8(2), uint8(1|opTruncate<<3), []byte(nil), []byte("12345"))
	f.Add(uint8(2), uint8(1|opOverwrite<<1|opOverwrite<<3), []byte{}, []byte("x"))
	f.Add(uint8(2), uint8(opOverwrite<<3), []byte(nil), []byte("guard is not read while the record is good"))
	f.Add(uint8(4), uint8(1|opOverlay<<3), []byte(nil), []byte("lockfs1 floor=1"))
	f.Fuzz(func(t *testing.T, rounds, ops uint8, lockData, guardData []byte) {
		const name = "n"
		dir := t.TempDir()
		opts := Options{SweepInterval: -1, IdleTTL: time.Nanosecond, GuardWait: 5 * time.Second}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()

		// Seed: a few exclusive grants, then maybe a sweep.
		b, err := Open(dir, opts)
		if err != nil {
			t.Fatal(err)
		}
		var prior uint64
		for range 1 + rounds%4 {
			h, err := b.Lock(ctx, name, lockengine.Exclusive, nil)
			if err != nil {
				t.Fatal(err)
			}
			if h.Token() <= prior {
				t.Fatalf("seeding: token %d after %d", h.Token(), prior)
			}
			prior = h.Token()
			if err := h.Unlock(); err != nil {
				t.Fatal(err)
			}
		}
		swept := ops&1 != 0
		if swept {
			time.Sleep(time.Millisecond) // the file's mtime must be older than IdleTTL
			if n := b.Sweep(); n != 1 {
				t.Fatalf("sweep removed %d files", n)
			}
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}

		// Corrupt.
		lockOp, guardOp, shared := int(ops>>1&3), int(ops>>3&3), ops&(1<<5) != 0
		lockFile, guardFile := lockPath(dir, name), filepath.Join(dir, "guard")
		applyOp(t, lockFile, lockOp, lockData)
		applyOp(t, guardFile, guardOp, guardData)

		// The model, from what is on disk now.
		lockBytes, err := os.ReadFile(lockFile)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		guardBytes, err := os.ReadFile(guardFile)
		if err != nil {
			t.Fatal(err)
		}
		lk, gd := parseModel(lockBytes, tokenPrefix), parseModel(guardBytes, floorPrefix)
		base, corrupt, forged := lk.n, lk.corrupt, lockOp != opKeep
		if lk.empty {
			base, corrupt, forged = gd.n, gd.corrupt, forged || guardOp != opKeep
		}
		mode := lockengine.Exclusive
		if shared {
			mode = lockengine.Shared
		}
		overflow := mode == lockengine.Exclusive && base == math.MaxUint64

		// Lock the name through a new backend.
		b, err = Open(dir, opts)
		if err != nil {
			t.Fatalf("open after corruption: %v", err)
		}
		defer b.Close()
		h, err := b.Lock(ctx, name, mode, nil)
		switch {
		case corrupt || overflow:
			if err == nil {
				t.Fatalf("lock %q (file %q, guard %q): granted token %d, want an error", name, lockBytes, guardBytes, h.Token())
			}
			if ctx.Err() != nil || errors.Is(err, lockengine.ErrWouldBlock) || !strings.Contains(err.Error(), `"`+name+`"`) ||
				(corrupt && !strings.Contains(err.Error(), "corrupt record")) || (overflow && !errors.Is(err, errTokenOverflow)) {
				t.Fatalf("lock with file %q, guard %q: unclear error: %v", lockBytes, guardBytes, err)
			}
			return
		case err != nil:
			t.Fatalf("lock with file %q, guard %q: %v", lockBytes, guardBytes, err)
		}
		want := base
		if mode == lockengine.Exclusive {
			// Exclusive grants never go below this Open's epoch base.
			want = max(base, b.Epoch()<<epochShift) + 1
		}
		if got := h.Token(); got != want {
			t.Fatalf("file %q, guard %q: %s token %d, want %d", lockBytes, guardBytes, mode, got, want)
		}
		if !forged && (h.Token() < prior || (mode == lockengine.Exclusive && h.Token() == prior)) {
			t.Fatalf("token %d after %d without a forged record (file %q, guard %q)", h.Token(), prior, lockBytes, guardBytes)
		}
		first := h.Token()
		if err := h.Unlock(); err != nil {
			t.Fatal(err)
		}

		// The grant wrote a good record (or kept one): the next
		// exclusive grant is above it, unless the token is exhausted.
		h, err = b.Lock(ctx, name, lockengine.Exclusive, nil)
		if first == math.MaxUint64 {
			if !errors.Is(err, errTokenOverflow) {
				t.Fatalf("lock after token %d: %v, want errTokenOverflow", first, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("second lock: %v", err)
		}
		if h.Token() <= first {
			t.Fatalf("second exclusive token %d after %d", h.Token(), first)
		}
		if err := h.Unlock(); err != nil {
			t.Fatal(err)
		}
	})
}
