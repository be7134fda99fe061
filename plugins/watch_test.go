package plugins

import (
	"strings"
	"testing"
	"time"
)

// TestNewWatcherRefusesNegativeDebounce: zero is the default, a negative debounce is a
// mistake and is refused (it used to mean the default too).
func TestNewWatcherRefusesNegativeDebounce(t *testing.T) {
	t.Parallel()
	if w, err := NewWatcher(t.TempDir(), -time.Millisecond, nil); err == nil || !strings.Contains(err.Error(), "debounce is -1ms") {
		if w != nil {
			_ = w.Close()
		}
		t.Fatalf("NewWatcher(debounce -1ms) = %v, want an error naming the debounce", err)
	}
	w, err := NewWatcher(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatalf("NewWatcher(debounce 0) = %v", err)
	}
	defer w.Close()
	if w.debounce != DefaultDebounce {
		t.Fatalf("NewWatcher(debounce 0).debounce = %s, want %s", w.debounce, DefaultDebounce)
	}
}
