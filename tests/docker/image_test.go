package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// imageRepo is the repository of the offline test image; the tag is
// <commit>-<content hash>-<run id>, so reruns and concurrent runs never
// collide and the sweep can tell whose image it is.
const imageRepo = "lockfs-test"

// buildImage builds the offline test image: a root filesystem with a static
// lockfs, a static etcdserver (tests/internal/etcdserver, for the etcd
// engine tests) and a static busybox (applet links in /bin), /mnt/locks, /tmp,
// /var/lib/lockfs, /etc/passwd and /etc/group, loaded with `docker import`.
// Scratch files go to a new directory below dir.
func buildImage(ctx context.Context, dir string) (string, error) {
	tmp, err := os.MkdirTemp(dir, "image-")
	if err != nil {
		return "", fmt.Errorf("image: %w", err)
	}
	defer os.RemoveAll(tmp)

	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	lockfs, err := lockfsBinary(ctx, root, tmp)
	if err != nil {
		return "", err
	}
	busybox, err := busyboxBinary(ctx, tmp)
	if err != nil {
		return "", err
	}
	etcdserver, err := etcdserverBinary(ctx, root, tmp)
	if err != nil {
		return "", err
	}
	applets, err := exec.CommandContext(ctx, busybox, "--list").Output()
	if err != nil {
		return "", fmt.Errorf("image: %s --list: %w", busybox, err)
	}
	rootfs, err := rootfsTar(lockfs, busybox, etcdserver, strings.Fields(string(applets)))
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(rootfs)
	commit := "nocommit"
	if out, err := exec.CommandContext(ctx, "git", "-C", root, "rev-parse", "--short=12", "HEAD").Output(); err == nil {
		commit = strings.TrimSpace(string(out))
	}
	tag := fmt.Sprintf("%s:%s-%s-%s", imageRepo, commit, hex.EncodeToString(sum[:6]), runID)

	args := []string{"import",
		"--change", "ENV PATH=/bin",
		"--change", "WORKDIR /",
		"--change", `CMD ["lockfs", "mount", "/mnt/locks"]`,
		"--change", "LABEL " + labelTest + "=1",
		"--change", "LABEL " + labelRun + "=" + runID,
		"--change", "LABEL " + labelPid + "=" + strconv.Itoa(os.Getpid()),
		"--change", "LABEL lockfs.test.commit=" + commit,
		"-", tag}
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Stdin = bytes.NewReader(rootfs)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("image: docker import: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return tag, nil
}

// moduleRoot finds the directory of go.mod above the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("image: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("image: go.mod not found above the working directory")
		}
		dir = parent
	}
}

// lockfsBinary returns a static lockfs: $LOCKFS_BIN, or one built from the
// module into tmp with CGO_ENABLED=0.
func lockfsBinary(ctx context.Context, root, tmp string) (string, error) {
	if p := os.Getenv("LOCKFS_BIN"); p != "" {
		if err := requireStatic(p); err != nil {
			return "", fmt.Errorf("image: LOCKFS_BIN: %w", err)
		}
		return p, nil
	}
	out := filepath.Join(tmp, "lockfs")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, "./cmd/lockfs")
	cmd.Dir = root
	// Sanitizer flags need cgo; the image needs a static binary.
	var goflags []string
	for _, f := range strings.Fields(os.Getenv("GOFLAGS")) {
		if f != "-race" && f != "-msan" && f != "-asan" {
			goflags = append(goflags, f)
		}
	}
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS="+strings.Join(goflags, " "))
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("image: go build ./cmd/lockfs: %w: %s", err, strings.TrimSpace(string(b)))
	}
	return out, requireStatic(out)
}

// busyboxBinary returns a static busybox: $LOCKFS_BUSYBOX, the one installed
// by Debian's busybox-static, or one unpacked into tmp from
// `apt-get download busybox-static`.
func busyboxBinary(ctx context.Context, tmp string) (string, error) {
	if p := os.Getenv("LOCKFS_BUSYBOX"); p != "" {
		if err := requireStatic(p); err != nil {
			return "", fmt.Errorf("image: LOCKFS_BUSYBOX: %w", err)
		}
		return p, nil
	}
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if requireStatic(p) == nil {
			return p, nil
		}
	}
	dl := filepath.Join(tmp, "deb")
	if err := os.MkdirAll(dl, 0o755); err != nil {
		return "", fmt.Errorf("image: %w", err)
	}
	get := exec.CommandContext(ctx, "apt-get", "download", "busybox-static")
	get.Dir = dl
	if b, err := get.CombinedOutput(); err != nil {
		return "", fmt.Errorf("image: no static busybox installed (apt-get install busybox-static) and apt-get download failed: %w: %s",
			err, strings.TrimSpace(string(b)))
	}
	debs, _ := filepath.Glob(filepath.Join(dl, "busybox-static_*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("image: apt-get download busybox-static left %d packages", len(debs))
	}
	x := filepath.Join(tmp, "busybox-static")
	if b, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], x).CombinedOutput(); err != nil {
		return "", fmt.Errorf("image: dpkg-deb -x %s: %w: %s", debs[0], err, strings.TrimSpace(string(b)))
	}
	p := filepath.Join(x, "bin", "busybox")
	return p, requireStatic(p)
}

// requireStatic returns an error unless path is an ELF executable without a
// program interpreter (statically linked), so it runs in an empty image.
func requireStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked", path)
		}
	}
	return nil
}

// rootfsTar returns a deterministic tar of the test image's root filesystem.
func rootfsTar(lockfs, busybox, etcdserver string, applets []string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	hdr := func(h *tar.Header) error {
		h.ModTime, h.Uid, h.Gid, h.Format = mtime, 0, 0, tar.FormatPAX
		return tw.WriteHeader(h)
	}
	for _, d := range []struct {
		name string
		mode int64
	}{
		{"bin/", 0o755}, {"dev/", 0o755}, {"etc/", 0o755}, {"mnt/", 0o755}, {"mnt/locks/", 0o755},
		{"proc/", 0o555}, {"root/", 0o700}, {"sys/", 0o555}, {"tmp/", 0o1777},
		{"var/", 0o755}, {"var/lib/", 0o755}, {"var/lib/lockfs/", 0o755},
	} {
		if err := hdr(&tar.Header{Typeflag: tar.TypeDir, Name: d.name, Mode: d.mode}); err != nil {
			return nil, fmt.Errorf("image: tar: %w", err)
		}
	}
	files := []struct {
		name string
		mode int64
		data []byte
	}{
		{"etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n")},
		{"etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n")},
	}
	for _, bin := range []struct{ name, src string }{{"bin/busybox", busybox}, {"bin/lockfs", lockfs}, {"bin/etcdserver", etcdserver}} {
		b, err := os.ReadFile(bin.src)
		if err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
		files = append(files, struct {
			name string
			mode int64
			data []byte
		}{bin.name, 0o755, b})
	}
	for _, f := range files {
		if err := hdr(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: f.mode, Size: int64(len(f.data))}); err != nil {
			return nil, fmt.Errorf("image: tar: %w", err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, fmt.Errorf("image: tar: %w", err)
		}
	}
	sort.Strings(applets)
	for _, a := range applets {
		if a == "busybox" || a == "lockfs" || a == "etcdserver" || strings.Contains(a, "/") {
			continue
		}
		// Relative link: an absolute one would point into the host.
		if err := hdr(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777}); err != nil {
			return nil, fmt.Errorf("image: tar: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("image: tar: %w", err)
	}
	return buf.Bytes(), nil
}
