package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// ClearFQDNSlots takes slots (a mask) out of every address an identity learned (mask 0: every slot), removing
// the addresses left with none, and returns how many it changed. An enforcer does it before a slot that a gone
// pattern held goes to another pattern, and for an identity that goes, before its number serves another
// namespace: what was learned for one name must never count for another.
func (dp *Datapath) ClearFQDNSlots(identity uint32, mask uint64) (int, error) {
	if mask == 0 {
		mask = ^uint64(0)
	}
	type entry struct {
		k fqdnKey
		v fqdnLearnedValue
	}
	var hit []entry
	err := walkBatch(dp.maps.FqdnLearned, func(k *fqdnKey, v *fqdnLearnedValue) {
		if k.Identity == identity && v.Slots&mask != 0 {
			hit = append(hit, entry{*k, *v})
		}
	})
	if err != nil {
		return 0, fmt.Errorf("walk the learned addresses: %w", err)
	}
	for i := range hit {
		e := &hit[i]
		e.v.Slots &^= mask
		if e.v.Slots == 0 {
			err := dp.maps.FqdnLearned.Delete(&e.k)
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			if err == nil {
				err = dp.addFQDNCount(identity, -1)
			}
			if err != nil {
				return i, fmt.Errorf("forget a learned address of identity %d: %w", identity, err)
			}
			continue
		}
		// written over in place: the datapath's own update of the entry meanwhile may be lost, which costs a
		// lookup, never a slot
		if err := dp.maps.FqdnLearned.Update(&e.k, &e.v, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return i, fmt.Errorf("clear slots of a learned address of identity %d: %w", identity, err)
		}
	}
	return len(hit), nil
}
