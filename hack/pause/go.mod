// The pod sandbox ("pause") image of `scripts/stack.sh up --cluster`, built
// locally because nothing can be pulled. No dependencies.
module worker-recovery-operator/hack/pause

go 1.25.0
