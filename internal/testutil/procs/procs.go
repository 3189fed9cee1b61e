// Package procs runs the long-lived child processes of a test harness (a control plane, a node's components):
// each in its own process group with its own log file, stopped by its PID, never by its group or name.
package procs

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Proc is a started process.
type Proc struct {
	Name    string
	Cmd     *exec.Cmd
	LogPath string
	done    chan struct{} // closed when the process has exited
	err     error         // its exit status, valid after done
}

// Start runs bin with args, its output (after a first line naming the command) in logPath, which is truncated.
// dir and env are the command's (empty: the caller's). start starts the command (nil: cmd.Start), so a caller can
// start it from a thread in another network namespace. The process gets its own process group (a terminal's ^C
// reaches only the harness, which then stops it) and no Pdeathsig: that fires when the forking OS thread exits,
// and Go ends threads that a netns-switching goroutine locked (ns.Do), which killed components in mid-test.
func Start(name, bin string, args []string, logPath, dir string, env []string, start func(*exec.Cmd) error) (*Proc, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child has its own descriptor
	fmt.Fprintf(logFile, "# %s %s\n", bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Dir, cmd.Env = dir, env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if start == nil {
		start = (*exec.Cmd).Start
	}
	if err := start(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, LogPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Done is closed when the process has ended.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitError says that the process ended, how, and the end of its log.
func (p *Proc) ExitError() error {
	return fmt.Errorf("%s exited (%v); tail of %s:\n%s", p.Name, p.err, p.LogPath, Tail(p.LogPath, 4096))
}

// Terminate sends SIGTERM to the process (by its PID), waits up to grace, then SIGKILLs it.
func (p *Proc) Terminate(grace time.Duration) {
	if p.Exited() {
		return
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.Cmd.Process.Kill()
		<-p.done
	}
}

// Kill SIGKILLs the process (by its PID), as a machine's power loss would end it, and waits until it is gone.
func (p *Proc) Kill() {
	if p.Exited() {
		return
	}
	_ = p.Cmd.Process.Kill()
	<-p.done
}

// WaitUntil polls ready every interval until it holds, the process exits, done closes or d passes; what names
// the awaited state in the error.
func (p *Proc) WaitUntil(done <-chan struct{}, d, interval time.Duration, what string, ready func() bool) error {
	deadline := time.Now().Add(d)
	for {
		if ready() {
			return nil
		}
		select {
		case <-p.done:
			return p.ExitError()
		case <-done:
			return fmt.Errorf("%s: stopped waiting for %s", p.Name, what)
		case <-time.After(interval):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no %s after %v; tail of %s:\n%s", p.Name, what, d, p.LogPath, Tail(p.LogPath, 4096))
		}
	}
}

// Tail returns the last max bytes of a log file, from a line start.
func Tail(path string, max int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read: %v)", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		if _, err := f.Seek(fi.Size()-max, io.SeekStart); err != nil {
			return fmt.Sprintf("(cannot read: %v)", err)
		}
	}
	b, _ := io.ReadAll(f)
	s := string(b)
	if int64(len(b)) == max {
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = "..." + s[i:]
		}
	}
	return strings.TrimRight(s, "\n")
}
