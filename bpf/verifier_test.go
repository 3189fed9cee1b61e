package bpf

import (
	"regexp"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"
)

// verifierBudget is the most instructions the verifier may walk for one program of the datapath before this test
// fails: the kernel's limit is 1,000,000, and a change that leaves less than a tenth of it is one the next change
// cannot follow. The test prints every program's figure, so a change shows what it costs.
const verifierBudget = 900_000

func TestVerifierHeadroom(t *testing.T) {
	spec, err := loadMoat()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats},
	})
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	defer coll.Close()
	processed := regexp.MustCompile(`processed (\d+) insns`)
	for name, prog := range coll.Programs {
		m := processed.FindStringSubmatch(prog.VerifierLog)
		if m == nil {
			t.Errorf("%s: no instruction count in the verifier's log:\n%s", name, prog.VerifierLog)
			continue
		}
		n, _ := strconv.Atoi(m[1])
		t.Logf("%-22s %8d instructions walked (%.0f%% of the kernel's limit)", name, n, float64(n)/1e4)
		if n > verifierBudget {
			t.Errorf("%s: the verifier walked %d instructions, more than the %d this datapath allows itself", name, n, verifierBudget)
		}
	}
}
