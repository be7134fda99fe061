//go:build !race

package runtime

// defaultCompileScale stretches the default compile deadline; see race.go.
const defaultCompileScale = 1
