package endpoint

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// lockFile is the network's lock in the record store; it is never removed (one file per network, not per pod).
const lockFile = ".lock"

// lock takes the lock of a network's records: shared by whatever forgets or releases an endpoint (DEL, GC,
// reconcile), exclusive for the enforcer's short commit of a move to tcx, so a move never brings back the record
// or the pins of a pod a DEL is removing. It returns the unlock.
func (s Store) lock(network string, exclusive bool) (func(), error) {
	dir := filepath.Join(s.Dir, network)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create endpoint record folder: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open the records' lock: %w", err)
	}
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock the records of network %s: %w", network, err)
	}
	return func() { f.Close() }, nil // closing the file lets go of the lock
}
