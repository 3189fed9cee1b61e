package policy

// The compiler's internals that the tests (package policy_test, which can import policytest) check.
var (
	EmptyValue     = emptyValue
	IdentityValue  = identityValue
	CompareEntries = compareEntries
)

// MaxClasses is maxClasses, for the tests.
const MaxClasses = maxClasses
