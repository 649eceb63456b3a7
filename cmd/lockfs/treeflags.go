package main

import (
	"flag"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"time"

	"github.com/lockfs/lockfs/fsnode"
	"github.com/lockfs/lockfs/lockengine"
)

// treeFlags are the flags of 'lockfs mount' about lock directories: the
// root directory's attributes and the attribute timeout.
type treeFlags struct {
	attrTimeout time.Duration
	rootMode    string // octal; "" means the default
	rootOwner   string // USER[:GROUP]; "" means the daemon's user and group
}

// registerTreeFlags adds the lock directory flags to fl.
func registerTreeFlags(fl *flag.FlagSet, tf *treeFlags) {
	fl.DurationVar(&tf.attrTimeout, "attr-timeout", fsnode.DefaultAttrTimeout,
		"how long the kernel keeps the attributes of lock directories and lock files: a change made through "+
			"another daemon of the same state directory or etcd prefix (mkdir, rmdir, chmod, chown) shows within it (0: ask every time)")
	fl.StringVar(&tf.rootMode, "root-mode", fmt.Sprintf("%04o", fsnode.DefaultRootMode),
		"mode of the mount's root directory, octal: who may lock top-level names (write) and make directories there")
	fl.StringVar(&tf.rootOwner, "root-owner", "",
		"owner of the mount's root directory, USER[:GROUP] by name or number (default: the daemon's user and group)")
}

// options returns the attribute timeout and the root's attributes for
// fsnode.Options, or a usage error.
func (tf *treeFlags) options() (time.Duration, *lockengine.DirAttr, error) {
	if tf.attrTimeout < 0 {
		return 0, nil, usageErrorf("mount: --attr-timeout must not be negative, got %v", tf.attrTimeout)
	}
	timeout := tf.attrTimeout
	if timeout == 0 {
		timeout = -1 // fsnode: zero is the default, negative none
	}
	mode, err := strconv.ParseUint(tf.rootMode, 8, 32)
	if err != nil || mode > 0o7777 {
		return 0, nil, usageErrorf("mount: --root-mode %q: want an octal mode from 0 to 7777", tf.rootMode)
	}
	uid, gid, err := parseOwner(tf.rootOwner, uint32(os.Getuid()), uint32(os.Getgid()))
	if err != nil {
		return 0, nil, usageErrorf("mount: --root-owner: %w", err)
	}
	return timeout, &lockengine.DirAttr{UID: uid, GID: gid, Mode: uint32(mode)}, nil
}

// parseOwner parses USER[:GROUP] as chown(1) does: USER and GROUP are
// names or numbers; "USER:" is USER's login group; ":GROUP" and "USER"
// leave the other one at its default (defUID, defGID); "" is both
// defaults.
func parseOwner(s string, defUID, defGID uint32) (uid, gid uint32, err error) {
	uid, gid = defUID, defGID
	name, group, hasGroup := strings.Cut(s, ":")
	if name != "" {
		u, err := lookupUser(name)
		if err != nil {
			return 0, 0, err
		}
		uid = u.uid
		if hasGroup && group == "" {
			if !u.known {
				return 0, 0, fmt.Errorf("%q: user %s has no login group to use", s, name)
			}
			gid = u.gid
		}
	}
	if group != "" {
		if gid, err = lookupGroup(group); err != nil {
			return 0, 0, err
		}
	}
	return uid, gid, nil
}

// userID is a user looked up by name or number.
type userID struct {
	uid, gid uint32
	known    bool // in the user database: gid is its login group
}

// lookupUser resolves a user name or number.
func lookupUser(s string) (userID, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		if u, err := user.LookupId(s); err == nil {
			if g, err := strconv.ParseUint(u.Gid, 10, 32); err == nil {
				return userID{uid: uint32(n), gid: uint32(g), known: true}, nil
			}
		}
		return userID{uid: uint32(n)}, nil
	}
	u, err := user.Lookup(s)
	if err != nil {
		return userID{}, fmt.Errorf("user %q: %w", s, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return userID{}, fmt.Errorf("user %q: uid %q: %w", s, u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return userID{}, fmt.Errorf("user %q: gid %q: %w", s, u.Gid, err)
	}
	return userID{uid: uint32(uid), gid: uint32(gid), known: true}, nil
}

// lookupGroup resolves a group name or number.
func lookupGroup(s string) (uint32, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(n), nil
	}
	g, err := user.LookupGroup(s)
	if err != nil {
		return 0, fmt.Errorf("group %q: %w", s, err)
	}
	n, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("group %q: gid %q: %w", s, g.Gid, err)
	}
	return uint32(n), nil
}
