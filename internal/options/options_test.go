package options

import (
	"strings"
	"testing"
	"time"
)

type inner struct {
	Wait time.Duration
}

type kind int

type opts struct {
	Kind   kind
	Count  int
	Size   int64
	Ratio  float64
	Pages  uint32
	Name   string
	Inner  inner
	hidden int
}

func TestCheckNotNegative(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		v    any
		want string // "" for no error
	}{
		{"zero value", opts{}, ""},
		{"positive", opts{Count: 1, Size: 2, Ratio: 0.5, Pages: 3, Inner: inner{Wait: time.Second}}, ""},
		{"negative int", opts{Count: -1}, "options.opts.Count is -1; it must not be negative (0 takes the default)"},
		{"negative int64", opts{Size: -5}, "options.opts.Size is -5;"},
		{"negative float", opts{Ratio: -0.5}, "options.opts.Ratio is -0.5;"},
		{"negative duration, nested", opts{Inner: inner{Wait: -time.Second}}, "options.opts.Inner.Wait is -1s;"},
		{"unexported fields are not options", opts{hidden: -1}, ""},
		{"an enumeration has rules of its own", opts{Kind: -1}, ""},
		{"not a struct", -1, ""},
	} {
		err := CheckNotNegative(tt.v)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: CheckNotNegative(%+v) = %v, want nil", tt.name, tt.v, err)
		case tt.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.want)):
			t.Errorf("%s: CheckNotNegative(%+v) = %v, want %q", tt.name, tt.v, err, tt.want)
		}
	}
}
