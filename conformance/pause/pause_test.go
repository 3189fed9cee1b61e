package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain makes this test binary the processes the tests need, by PAUSE_TEST:
//
//	pause     pause itself, which first starts an "exit" child and starts a PAUSE_TEST_USR1 on every SIGUSR1,
//	          saying "spawned PID" on stdout each time
//	exit      exits at once
//	orphaner  starts a "linger" child and exits at once, so that the child is an orphan
//	linger    waits until the file PAUSE_TEST_FILE exists, then exits
func TestMain(m *testing.M) {
	switch os.Getenv("PAUSE_TEST") {
	case "":
		os.Exit(m.Run())
	case "pause":
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		fmt.Printf("spawned %d\n", spawn("exit"))
		go func() {
			for range usr1 {
				fmt.Printf("spawned %d\n", spawn(os.Getenv("PAUSE_TEST_USR1")))
			}
		}()
		os.Exit(run(os.Stderr))
	case "exit":
		os.Exit(0)
	case "orphaner":
		spawn("linger")
		os.Exit(0)
	case "linger":
		for end := time.Now().Add(time.Minute); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			if _, err := os.Stat(os.Getenv("PAUSE_TEST_FILE")); err == nil {
				break
			}
		}
		os.Exit(0)
	}
	os.Exit(3)
}

// spawn starts this binary as role (never pause: that would start itself without end) and does not wait for it.
func spawn(role string) int {
	if role == "pause" {
		panic("spawn: pause may not start pause")
	}
	exe, err := os.Executable()
	if err != nil {
		panic(err)
	}
	env := []string{"PAUSE_TEST=" + role} // the role must be the only PAUSE_TEST: the first one counts
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PAUSE_TEST=") {
			env = append(env, kv)
		}
	}
	pid, err := syscall.ForkExec(exe, []string{exe}, &syscall.ProcAttr{Env: env, Files: []uintptr{0, 1, 2}})
	if err != nil {
		panic(err)
	}
	return pid
}

// children are the processes whose parent is pid, with their states (Z: a zombie), from /proc.
func children(t *testing.T, pid int) map[int]string {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	found := map[int]string{}
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid == pid {
			child, _ := strconv.Atoi(strings.Fields(s)[0])
			found[child] = f[0]
		}
	}
	return found
}

// waitFor polls cond until it holds, and fails the test with what when it never does.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(15 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("never: %s", what)
		}
	}
}

// startPause starts the pause role, in a PID namespace of its own with newPID, and returns it with its stdout,
// its stderr and the file that ends the lingering orphans.
func startPause(t *testing.T, newPID bool) (*exec.Cmd, *bufio.Reader, *strings.Builder, string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "end")
	cmd := exec.Command(exe)
	// Outside a PID namespace of its own, pause only gets a child that ends: an orphan would go to the
	// machine's init, which may not reap it.
	usr1 := "exit"
	if newPID {
		usr1 = "orphaner"
	}
	cmd.Env = append(os.Environ(), "PAUSE_TEST=pause", "PAUSE_TEST_FILE="+file, "PAUSE_TEST_USR1="+usr1)
	if newPID {
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	}
	stderr := &strings.Builder{}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		if newPID && (errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL)) {
			t.Skipf("no PID namespace for this test: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.WriteFile(file, nil, 0o644) // the lingering orphans end
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, bufio.NewReader(stdout), stderr, file
}

// TestReap: pause reaps a child that ended before it was ready and one that ends later; as PID 1 of a PID
// namespace, it also reaps an orphan reparented to it (the sandbox of a pod that shares its process namespace). Then SIGTERM (or SIGINT) ends it with status 0.
func TestReap(t *testing.T) {
	for _, c := range []struct {
		name   string
		newPID bool
		stop   syscall.Signal
	}{
		{"child", false, syscall.SIGTERM},
		{"orphan in a PID namespace", true, syscall.SIGINT},
	} {
		t.Run(c.name, func(t *testing.T) {
			cmd, stdout, stderr, file := startPause(t, c.newPID)
			pid := cmd.Process.Pid
			if line, err := stdout.ReadString('\n'); err != nil || !strings.HasPrefix(line, "spawned ") {
				t.Fatalf("pause's stdout: %q (%v)", line, err)
			}
			waitFor(t, "the first child reaped", func() bool { return len(children(t, pid)) == 0 })

			if err := cmd.Process.Signal(syscall.SIGUSR1); err != nil {
				t.Fatal(err)
			}
			if line, err := stdout.ReadString('\n'); err != nil || !strings.HasPrefix(line, "spawned ") {
				t.Fatalf("pause's stdout: %q (%v)", line, err)
			}
			if c.newPID {
				// The orphaner is reaped; its child, reparented to pause, lingers until told to end.
				waitFor(t, "one live orphan left, the orphaner reaped", func() bool {
					ch := children(t, pid)
					for _, state := range ch {
						return len(ch) == 1 && state != "Z"
					}
					return false
				})
				if err := os.WriteFile(file, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, "every child reaped", func() bool { return len(children(t, pid)) == 0 })

			if err := cmd.Process.Signal(c.stop); err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, stdout)
			if err := cmd.Wait(); err != nil {
				t.Errorf("pause after %v: %v, want exit status 0", c.stop, err)
			}
			if want := "got signal: " + c.stop.String(); !strings.Contains(stderr.String(), want) {
				t.Errorf("pause's stderr %q lacks %q", stderr, want)
			}
			if notPID1 := strings.Contains(stderr.String(), "not PID 1"); notPID1 == c.newPID {
				t.Errorf("pause's stderr %q: warns about not being PID 1: %v", stderr, notPID1)
			}
		})
	}
}
