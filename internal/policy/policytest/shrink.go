package policytest

import "github.com/moatfw/moat/internal/policy"

// Shrink removes rules from p, halves of them and then ever smaller chunks, for as long as disagrees still
// holds of what is left, and returns the smallest policy it found: a copy, p is left as it was (nil for nil).
// disagrees should hold of p.
func Shrink(p *policy.IdentityPolicy, disagrees func(*policy.IdentityPolicy) bool) *policy.IdentityPolicy {
	if p == nil {
		return nil
	}
	cur := *p
	for chunk := len(cur.Rules) / 2; chunk >= 1; chunk /= 2 {
		for i := 0; i < len(cur.Rules); {
			next := cur
			next.Rules = append(append([]policy.Rule(nil), cur.Rules[:i]...), cur.Rules[min(i+chunk, len(cur.Rules)):]...)
			if disagrees(&next) {
				cur = next
			} else {
				i += chunk
			}
		}
	}
	return &cur
}
