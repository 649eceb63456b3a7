package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestHoldersOmitted(t *testing.T) {
	s := "1 2 3 shared 4 2026-01-01T00:00:00Z open\n... 1999 more\n"
	assert.Len(t, parseHolders(s), 1, "the count line is no holder")
	assert.Equal(t, 1999, holdersOmitted(s))
	assert.Equal(t, 0, holdersOmitted("1 2 3 shared 4 2026-01-01T00:00:00Z open\n"))
	assert.Equal(t, 0, holdersOmitted(""))
	assert.Equal(t, 7, holdersOmitted("... 7 more"))
}

func TestDisplayName(t *testing.T) {
	for name, quoted := range map[string]bool{
		"backup":          false,
		"caf\u00e9":       false,
		"日本":              false,
		"a b":             true,
		`a"b`:             true,
		"a\tb":            true,
		"a\x7fb":          true,
		"a\u0085b":        true, // C1 (NEL)
		"a\u009bb":        true, // C1 (CSI)
		"evil\u202egpj.x": true, // RIGHT-TO-LEFT OVERRIDE
		"a\u2066b":        true,
		"a\u2069b":        true,
		"a\u200eb":        true,
		"a\u200fb":        true,
		"a\u061cb":        true,
		"a\xffb":          true, // invalid UTF-8
	} {
		got := displayName(name)
		if quoted {
			assert.True(t, strings.HasPrefix(got, `"`), "%q shown as %s", name, got)
			assert.NotContains(t, got, "\u202e")
		} else {
			assert.Equal(t, name, got)
		}
	}
}

func TestStatusTableOmittedAndError(t *testing.T) {
	rep := statusReport{Mount: "/m", Locks: []statusLock{
		{Name: "big", State: "held", Mode: "shared", Token: 3, HoldersOmitted: 1999,
			Holders: []statusHolder{{UID: 1, Mode: "shared", Token: 3, Granted: "g", Via: "open"}}},
		{Name: "bad\u202e", State: stateError, Error: "getxattr: argument list too long"},
	}}
	var buf bytes.Buffer
	writeStatusTable(&buf, rep)
	out := buf.String()
	assert.Contains(t, out, "... 1999 more holders")
	assert.Contains(t, out, `"bad\u202e"  error`)
	assert.Contains(t, out, "argument list too long")
	b, err := json.Marshal(rep)
	require.NoError(t, err)
	assert.Contains(t, string(b), `"holders_omitted":1999`)
	assert.Contains(t, string(b), `"error":"getxattr: argument list too long"`)
}

// A lock whose attributes cannot be read does not fail the listing.
func TestReadStatusContinuesPastErrors(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "a"), nil, 0o644))
	require.NoError(t, os.Symlink("/nonexistent", filepath.Join(dir, "b")))
	rep, err := readStatus(dir)
	require.NoError(t, err)
	// A plain directory has no user.lockfs.* attributes: the files read
	// as free (left out) or as errors, never as a failure of the whole.
	for _, lk := range rep.Locks {
		assert.Equal(t, stateError, lk.State, lk.Name)
		assert.NotEmpty(t, lk.Error)
	}
}

func TestMetricsServerTimeouts(t *testing.T) {
	srv := newMetricsServer(http.NotFoundHandler())
	assert.Positive(t, srv.ReadHeaderTimeout)
	assert.Positive(t, srv.ReadTimeout)
	assert.Positive(t, srv.WriteTimeout)
	assert.Positive(t, srv.IdleTimeout)
}
