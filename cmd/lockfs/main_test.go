package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func runCmd(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsageAndVersion(t *testing.T) {
	code, out, _ := runCmd("version")
	assert.Equal(t, exitOK, code)
	assert.True(t, strings.HasPrefix(out, "lockfs "), out)

	for _, args := range [][]string{{"--help"}, {"help"}, {"-h"}} {
		code, out, _ = runCmd(args...)
		assert.Equal(t, exitOK, code, args)
		assert.Contains(t, out, "lockfs mount [flags] MOUNTPOINT", args)
	}
	for _, args := range [][]string{{"mount", "--help"}, {"help", "mount"}, {"mount", "-h"}} {
		code, out, _ = runCmd(args...)
		assert.Equal(t, exitOK, code, args)
		assert.Contains(t, out, "--state-dir", args)
		assert.Contains(t, out, ".timeout/SECS/NAME", args)
	}

	code, _, errOut := runCmd()
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "Usage:")
	code, _, errOut = runCmd("frobnicate")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, `unknown command "frobnicate"`)
	code, _, _ = runCmd("version", "extra")
	assert.Equal(t, exitUsage, code)
}

func TestMountUsageErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	state := filepath.Join(dir, "state")
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"mount"}, "missing MOUNTPOINT"},
		{[]string{"mount", "a", "b"}, "want one MOUNTPOINT"},
		{[]string{"mount", "--bogus", dir}, "flag provided but not defined"},
		{[]string{"mount", "--heartbeat", "0s", dir}, "--heartbeat must be positive"},
		{[]string{"mount", "--heartbeat", "1s", "--takeover-after", "2s", dir}, "at least 3x"},
		{[]string{"mount", "--log-level", "loud", dir}, "--log-level"},
		{[]string{"mount", "--ready-fd", "987", dir}, "--ready-fd 987"},
		{[]string{"mount", "--state-dir", state, filepath.Join(dir, "missing")}, "does not exist"},
		{[]string{"mount", "--state-dir", state, file}, "is not a directory"},
	} {
		code, _, errOut := runCmd(c.args...)
		assert.Equal(t, exitUsage, code, c.args)
		assert.Contains(t, errOut, c.msg, c.args)
	}
}

func TestParseMountArgs(t *testing.T) {
	cfg, err := parseMountArgs([]string{"--heartbeat", "2s", "/mnt/locks", "--log-level", "debug",
		"--takeover-after=6s", "--state-dir", "/tmp/s", "--ready-fd", "1", "--debug-fuse"})
	require.NoError(t, err)
	assert.Equal(t, "/mnt/locks", cfg.mountpoint)
	assert.Equal(t, 2*time.Second, cfg.heartbeat)
	assert.Equal(t, 6*time.Second, cfg.takeoverAfter)
	assert.Equal(t, "/tmp/s", cfg.stateDir)
	assert.Equal(t, 1, cfg.readyFd)
	assert.True(t, cfg.debugFUSE)
	assert.Equal(t, "DEBUG", cfg.logLevel.String())

	cfg, err = parseMountArgs([]string{"--", "-odd-dir"})
	require.NoError(t, err)
	assert.Equal(t, "-odd-dir", cfg.mountpoint)
	assert.Equal(t, 10*time.Second, cfg.heartbeat)
	assert.Equal(t, time.Duration(0), cfg.takeoverAfter)
	assert.Equal(t, -1, cfg.readyFd)
	assert.NotEmpty(t, cfg.stateDir)
}
