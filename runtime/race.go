//go:build race

package runtime

// defaultCompileScale stretches the default compile deadline under the race detector, which
// makes wazero's compiler 10-100 times slower (a 3 MB Go module: under a second without it,
// more than two minutes with it on a busy 2-core machine).
const defaultCompileScale = 10
