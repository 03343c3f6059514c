// Package testsrv starts the real servers tests need (PostgreSQL, an S3
// server) as child processes of the test binary: shared plumbing of
// internal/pgtest and internal/s3test.
package testsrv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// WaitTCP waits until addr accepts connections or the deadline passes; it
// gives up early when the process ends.
func WaitTCP(addr string, timeout time.Duration, exited <-chan struct{}) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("the server exited before it listened on %s", addr)
		case <-deadline.C:
			return fmt.Errorf("nothing listens on %s after %s", addr, timeout)
		case <-tick.C:
		}
	}
}

// TempDir creates a directory for a server that outlives no test binary:
// os.TempDir()/fbp-{name}-{pid}. Directories of earlier test binaries that
// are gone (crashed, killed) are removed first.
func TempDir(name string) (string, error) {
	base := os.TempDir()
	old, _ := filepath.Glob(filepath.Join(base, "fbp-"+name+"-*"))
	for _, d := range old {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), "fbp-"+name+"-"))
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			_ = os.RemoveAll(d)
		}
	}
	dir := filepath.Join(base, fmt.Sprintf("fbp-%s-%d", name, os.Getpid()))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	return dir, nil
}

// Child prepares cmd to die with the test binary (SIGINT when the parent
// goes) and, when as is not "" and the test runs as root, to run as that
// user (PostgreSQL refuses to run as root).
func Child(cmd *exec.Cmd, as string) error {
	attr := &syscall.SysProcAttr{Pdeathsig: syscall.SIGINT, Setpgid: true}
	if as != "" && os.Geteuid() == 0 {
		u, err := user.Lookup(as)
		if err != nil {
			return fmt.Errorf("running as root and there is no %s user: %w", as, err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		attr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	cmd.SysProcAttr = attr
	return nil
}

// Chown hands dir to user as when the test runs as root.
func Chown(dir, as string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup(as)
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

// Required reports whether the environment variable env asks to fail
// instead of skipping ("1" or "true").
func Required(env string) bool {
	v := os.Getenv(env)
	return v == "1" || strings.EqualFold(v, "true")
}

// stopChild ends a server started with Child: SIGINT, SIGKILL if it has
// not exited within 10s (exited is closed when its Wait returned), then
// removes its directory.
func stopChild(cmd *exec.Cmd, exited <-chan struct{}, dir string) {
	_ = cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
	_ = os.RemoveAll(dir)
}
