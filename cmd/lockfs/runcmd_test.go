package main

import (
	"bytes"
	"errors"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseRunArgs(t *testing.T) {
	c, err := parseRunArgs([]string{"--mount", "/m", "x", "--", "cmd", "-n", "arg"})
	require.NoError(t, err)
	assert.Equal(t, "/m/x", c.lockPath())
	assert.Equal(t, []string{"cmd", "-n", "arg"}, c.argv)
	assert.Equal(t, 1, c.conflict)
	assert.Equal(t, 5*time.Second, c.killGrace)

	c, err = parseRunArgs([]string{"-s", "-n", "-E", "9", "/mnt/l/y", "true"})
	require.NoError(t, err)
	assert.True(t, c.shared)
	assert.Equal(t, "/mnt/l/.try/y", c.lockPath())
	assert.Equal(t, 9, c.conflict)

	c, err = parseRunArgs([]string{"--mount", "/m", "-w", "1.5", "x", "true"})
	require.NoError(t, err)
	assert.Equal(t, "/m/.timeout/1.5s/x", c.lockPath())
	c, err = parseRunArgs([]string{"--mount", "/m", "-w", "0", "x", "true"})
	require.NoError(t, err)
	assert.Equal(t, "/m/.try/x", c.lockPath())

	t.Setenv(mountEnv, "/env")
	c, err = parseRunArgs([]string{"x", "true"})
	require.NoError(t, err)
	assert.Equal(t, "/env/x", c.lockPath())

	for _, bad := range [][]string{
		{}, {"x"}, {"x", "--"}, {"-n", "-w", "1", "x", "true"}, {"-w", "soon", "x", "true"},
		{"a/b", "true"}, {".try", "true"}, {"-E", "300", "x", "true"},
	} {
		_, err := parseRunArgs(bad)
		var ue usageError
		assert.True(t, errors.As(err, &ue), "%q: %v", bad, err)
	}
}

func TestCommandStatus(t *testing.T) {
	var buf bytes.Buffer
	assert.Equal(t, 0, commandStatus(nil, &buf))
	assert.Equal(t, 7, commandStatus(exec.Command("sh", "-c", "exit 7").Run(), &buf))
	assert.Equal(t, 128+15, commandStatus(exec.Command("sh", "-c", "kill -TERM $$").Run(), &buf))
}

func TestParseHolders(t *testing.T) {
	hs := parseHolders("1 2 3 exclusive 4 2026-01-01T00:00:00Z flock\n5 6 0 shared 4 2026-01-01T00:00:01Z open lost\n")
	require.Len(t, hs, 2)
	assert.Equal(t, statusHolder{UID: 1, GID: 2, PID: 3, Mode: "exclusive", Token: 4, Granted: "2026-01-01T00:00:00Z", Via: "flock"}, hs[0])
	assert.True(t, hs[1].Lost)
	assert.Equal(t, "open", hs[1].Via)
	assert.Empty(t, parseHolders(""))
}
