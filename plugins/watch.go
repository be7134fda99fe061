package plugins

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// DefaultDebounce is how long a plugin's files must stay unchanged before it is reloaded.
const DefaultDebounce = 250 * time.Millisecond

// Watcher reports which plugins in a directory changed. A plugin counts as changed once its
// directory has seen no event for the debounce period, so a copy in progress (many writes) is
// reported once, after it ends. Debouncing limits partial reads; it cannot rule them out for a
// slow copy, which is why docs/plugins.md asks for write-then-rename and why every load
// re-validates the digest and signature of exactly the bytes it compiles.
type Watcher struct {
	root     string
	debounce time.Duration
	log      *zap.Logger
	fsw      *fsnotify.Watcher
	changes  chan []string

	mu      sync.Mutex
	pending map[string]bool // plugin names waiting for the quiet period
	timer   *time.Timer
	rescan  bool
}

// NewWatcher watches root (and each plugin directory in it). debounce is optional: 0 means
// DefaultDebounce, and a negative one is refused (docs/embedding.md). Call Run to start
// delivering changes, and Close when done.
func NewWatcher(root string, debounce time.Duration, log *zap.Logger) (*Watcher, error) {
	switch {
	case debounce < 0:
		return nil, fmt.Errorf("plugins: NewWatcher debounce is %s; it must not be negative (0 takes the default)", debounce)
	case debounce == 0:
		debounce = DefaultDebounce
	}
	if log == nil {
		log = zap.NewNop()
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	w := &Watcher{root: root, debounce: debounce, log: log, fsw: fsw,
		changes: make(chan []string, 1), pending: map[string]bool{}}
	if err := fsw.Add(root); err != nil {
		_ = fsw.Close()
		return nil, err
	}
	names, err := Names(root)
	if err != nil {
		_ = fsw.Close()
		return nil, err
	}
	for _, n := range names {
		w.watchDir(n)
	}
	return w, nil
}

// Changes delivers the names of plugins whose files changed (added, replaced or removed),
// after the quiet period. A name may be reported although nothing relevant changed; the
// receiver re-reads the plugin and decides.
func (w *Watcher) Changes() <-chan []string { return w.changes }

// Close stops watching.
func (w *Watcher) Close() error { return w.fsw.Close() }

// Run processes file events until ctx ends or the watcher is closed.
func (w *Watcher) Run(ctx context.Context) {
	defer func() {
		w.mu.Lock()
		if w.timer != nil {
			w.timer.Stop()
		}
		w.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return
			}
			w.event(ev)
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return
			}
			// An overflow loses events; rescan everything rather than miss a replacement.
			w.log.Warn("plugins watcher error; rescanning the directory", zap.Error(err))
			w.mu.Lock()
			w.rescan = true
			w.arm()
			w.mu.Unlock()
		}
	}
}

func (w *Watcher) event(ev fsnotify.Event) {
	rel, err := filepath.Rel(w.root, ev.Name)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return
	}
	parts := strings.Split(rel, string(filepath.Separator))
	name := parts[0]
	if Ignored(name) {
		return
	}
	if len(parts) == 1 && ev.Has(fsnotify.Create) {
		if st, err := os.Stat(ev.Name); err == nil && st.IsDir() {
			w.watchDir(name)
		}
	}
	w.mu.Lock()
	w.pending[name] = true
	w.arm()
	w.mu.Unlock()
}

// arm (re)starts the quiet-period timer; w.mu is held.
func (w *Watcher) arm() {
	if w.timer == nil {
		w.timer = time.AfterFunc(w.debounce, w.flush)
		return
	}
	w.timer.Reset(w.debounce)
}

func (w *Watcher) flush() {
	w.mu.Lock()
	names := make([]string, 0, len(w.pending))
	for n := range w.pending {
		names = append(names, n)
	}
	if w.rescan {
		w.rescan = false
		if all, err := Names(w.root); err == nil {
			for _, n := range all {
				if !w.pending[n] {
					names = append(names, n)
				}
				w.watchDir(n)
			}
		}
	}
	w.pending = map[string]bool{}
	w.mu.Unlock()
	if len(names) == 0 {
		return
	}
	// Coalesce with an undelivered batch rather than block the timer goroutine.
	for {
		select {
		case w.changes <- names:
			return
		case old := <-w.changes:
			names = union(old, names)
		}
	}
}

func (w *Watcher) watchDir(name string) {
	// A directory removed between the event and Add is fine: its removal is an event too.
	if err := w.fsw.Add(filepath.Join(w.root, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		w.log.Warn("cannot watch plugin directory", zap.String("plugin", name), zap.Error(err))
	}
}

func union(a, b []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range append(a, b...) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
