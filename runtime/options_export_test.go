package runtime

// EffectiveLoadLimits returns l with its defaults applied, as NewEngine uses it.
func EffectiveLoadLimits(l LoadLimits) (LoadLimits, error) { return l.withDefaults() }

// DefaultCompileScale is what DefaultCompileTimeout is multiplied by in this build.
const DefaultCompileScale = defaultCompileScale
