package endpoint

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/moatfw/moat/bpf"
)

// releaseLinks moves the key's pinned links, if any, to the released folder, attached as they are.
func (l Lifecycle) releaseLinks(k Key) error {
	dir := k.LinkDir(l.PinRoot)
	if _, err := os.Stat(dir); err != nil {
		return nil
	}
	to := k.releasedDir(l.PinRoot, time.Now())
	if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
		return fmt.Errorf("create the released links folder: %w", err)
	}
	if err := os.Rename(dir, to); err != nil {
		return fmt.Errorf("release the links pinned in %s: %w", dir, err)
	}
	return nil
}

// releasedLink is one released folder: the attachment its pins hold and when it was released.
type releasedLink struct {
	dir string
	at  time.Time
	att bpf.Attachment // nil when the folder holds no links
}

// released opens every released folder; the caller closes each attachment.
func (l Lifecycle) released() ([]releasedLink, error) {
	dirs, err := releasedDirs(l.PinRoot)
	if err != nil {
		return nil, err
	}
	var out []releasedLink
	for _, dir := range dirs {
		r := releasedLink{dir: dir}
		r.at, _ = releasedAt(dir)
		if att, err := bpf.OpenAttachment(bpf.AttachmentRecord{AttachMode: bpf.ModeTCX}, 0, dir); err == nil {
			r.att = att
		}
		out = append(out, r)
	}
	return out, nil
}

// SweepReleased removes the released links whose device is gone: the kernel dropped them from the device when it
// was unregistered, so unpinning them waits for nothing. Links still on a device stay (Mover detaches those that
// outlive their pod). It reports how many it removed.
func (l Lifecycle) SweepReleased() (int, error) {
	rels, err := l.released()
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, r := range rels {
		gone := r.att == nil || r.att.Ifindex() == 0
		if r.att != nil {
			errs = append(errs, r.att.Close())
		}
		if !gone {
			continue
		}
		if err := os.RemoveAll(r.dir); err != nil {
			errs = append(errs, fmt.Errorf("remove released links %s: %w", r.dir, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// detachSurvivors detaches the released links still on a device released longer than age ago: the veth outlived
// its pod's DEL. Each detach waits the kernel's grace periods; pace is called after each with how long it took.
func (l Lifecycle) detachSurvivors(age time.Duration, pace func(time.Duration) bool) (int, error) {
	rels, err := l.released()
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for i, r := range rels {
		if r.att == nil {
			continue
		}
		if r.att.Ifindex() == 0 || time.Since(r.at) < age {
			errs = append(errs, r.att.Close())
			continue
		}
		start := time.Now()
		found, err := detachLinks(r.dir)
		errs = append(errs, err, r.att.Close())
		if found {
			n++
		}
		if !pace(time.Since(start)) {
			for _, rest := range rels[i+1:] {
				if rest.att != nil {
					rest.att.Close()
				}
			}
			break
		}
	}
	return n, errors.Join(errs...)
}

// reclaim takes up released links still attached to device ifindex (the veth outlived a pod's DEL and now
// serves another ADD): their pins move to linkDir and, where they run other code than dp's, the programs are
// swapped in place, which waits for no grace period. It returns nil when there are none.
func (l Lifecycle) reclaim(dp *bpf.Datapath, ifindex int, linkDir string) (bpf.Attachment, error) {
	rels, err := l.released()
	if err != nil {
		return nil, err
	}
	var found string
	for _, r := range rels {
		if r.att == nil {
			continue
		}
		if r.att.Ifindex() == ifindex && found == "" {
			found = r.dir
		}
		r.att.Close()
	}
	if found == "" {
		return nil, nil
	}
	if _, err := os.Stat(linkDir); err == nil {
		if _, err := detachLinks(linkDir); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Dir(linkDir), 0o700); err != nil {
		return nil, fmt.Errorf("create link pin folder: %w", err)
	}
	if err := os.Rename(found, linkDir); err != nil {
		return nil, fmt.Errorf("take up the released links %s: %w", found, err)
	}
	att, err := bpf.OpenAttachment(bpf.AttachmentRecord{AttachMode: bpf.ModeTCX}, ifindex, linkDir)
	if err != nil {
		return nil, err
	}
	if _, err := att.Upgrade(dp.FromPod, dp.ToPod); err != nil {
		att.Close()
		return nil, err
	}
	return att, nil
}
