package tasks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/internal/schema"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/plugins"
)

// Updates delivers the whole catalog each time the served tasks change (a plugin added,
// replaced or removed); pass it to worker.Config.CatalogUpdates. Only the newest catalog is
// kept if the receiver falls behind. Nil for a set without a plugins directory.
func (s *Set) Updates() <-chan []api.TaskDef {
	if s.updates == nil {
		return nil
	}
	return s.updates
}

// startPlugins loads every plugin and starts watching the directory. The watcher starts
// first so that a change made during the initial scan is not missed.
func (s *Set) startPlugins(ctx context.Context) error {
	pol := s.opts.Policy
	trust, err := plugins.LoadTrust(pol.Plugins.TrustedPublishers...)
	if err != nil {
		return err
	}
	s.trust = trust
	w, err := plugins.NewWatcher(s.opts.PluginsDir, s.opts.Debounce, s.log.Named("plugins"))
	if err != nil {
		return err
	}
	names, err := plugins.Names(s.opts.PluginsDir)
	if err != nil {
		_ = w.Close()
		return err
	}
	s.reloadAll(ctx, names)
	s.updates = make(chan []api.TaskDef, 1)
	wctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stop = func() { stop(); _ = w.Close() }
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		go w.Run(wctx)
		for {
			select {
			case <-wctx.Done():
				return
			case names := <-w.Changes():
				if s.reloadAll(wctx, names) {
					s.publish()
				}
			}
		}
	}()
	return nil
}

// publish offers the current catalog on s.updates, replacing an undelivered older one.
func (s *Set) publish() {
	cat := s.Catalog()
	for {
		select {
		case s.updates <- cat:
			return
		case <-s.updates:
		}
	}
}

// reload re-reads the plugin called name and swaps it in if it is new or changed and valid.
// A plugin whose directory is gone is removed. A plugin that fails any check is refused with
// one log line saying why, and the version already serving (if any) keeps serving. It reports
// whether the set changed.
// reloadAll reloads each named plugin on a goroutine of its own, so that a module that is slow
// to compile (up to the engine's compile deadline) delays no other plugin. It reports whether
// any changed.
func (s *Set) reloadAll(ctx context.Context, names []string) bool {
	var wg sync.WaitGroup
	var changed atomic.Bool
	for _, n := range names {
		wg.Go(func() {
			if s.reload(ctx, n) {
				changed.Store(true)
			}
		})
	}
	wg.Wait()
	return changed.Load()
}

func (s *Set) reload(ctx context.Context, name string) bool {
	if len(s.opts.Only) > 0 && !slices.Contains(s.opts.Only, name) {
		return false
	}
	log := s.log.With(zap.String("plugin", name))
	cur, _ := s.Get(name)
	if cur != nil && cur.Plugin == nil {
		// A policy task with a module of the same name; plugins.Open explains the refusal.
		cur = nil
	}
	if _, err := os.Stat(filepath.Join(s.opts.PluginsDir, name)); errors.Is(err, fs.ErrNotExist) {
		if cur == nil {
			return false
		}
		log.Info("plugin removed; jobs already running finish on it", zap.String("version", cur.Policy.Version))
		return s.swap(ctx, name, nil)
	}
	p, err := plugins.Open(s.opts.PluginsDir, name, s.opts.Policy, s.trust)
	if err == nil && cur != nil && same(cur.Plugin, p) {
		return false
	}
	if err == nil {
		err = publishable(p)
	}
	var t *Task
	if err == nil {
		t, err = s.build(ctx, p.Grant, p)
	}
	if err != nil {
		msg := "plugin refused"
		if cur != nil {
			msg = "plugin refused; the previous version keeps serving"
			log = log.With(zap.String("serving_version", cur.Policy.Version), zap.String("serving_sha256", cur.Module.Digest()))
		}
		log.Error(msg, zap.Error(err))
		return false
	}
	for _, d := range p.Diffs {
		log.Warn("plugin requests more than the policy grants; loaded without it", zap.String("field", d.Field),
			zap.String("requested", d.Requested), zap.String("granted", d.Granted))
	}
	signer := ""
	if p.Signature != nil {
		signer = p.Signature.KeyID
	}
	log.Info("plugin loaded", zap.String("version", p.Manifest.Version), zap.String("sha256", p.Digest),
		zap.String("signer", signer), zap.Bool("replaces", cur != nil))
	return s.swap(ctx, name, t)
}

// maxSchemaBytes is the control plane's limit on one catalog schema, compacted.
const maxSchemaBytes = 64 << 10

// publishable refuses a plugin whose schemas the control plane would refuse in its catalog.
// The control plane refuses a whole catalog for one bad entry: published as is, one plugin
// would stop the worker at start (registration fails) and every later catalog update. The
// schemas are compiled by the same package the control planes use (internal/schema); the
// manifest parser holds version and description to the catalog's rules.
func publishable(p *plugins.Plugin) error {
	for _, sc := range []struct {
		field string
		raw   json.RawMessage
	}{{"input_schema", p.Manifest.InputSchema}, {"output_schema", p.Manifest.OutputSchema}} {
		if sc.raw == nil {
			continue
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, sc.raw); err != nil {
			return outcome.New(outcome.ModuleRejected, "plugin %q: %s is not JSON: %v", p.Name, sc.field, err)
		}
		if buf.Len() > maxSchemaBytes {
			return outcome.New(outcome.ModuleRejected, "plugin %q: %s is %d bytes (compacted), the control plane's catalog accepts at most %d", p.Name, sc.field, buf.Len(), maxSchemaBytes)
		}
		if _, err := schema.Compile(buf.Bytes()); err != nil {
			return outcome.New(outcome.ModuleRejected, "plugin %q: %s is not a JSON Schema the control plane accepts: %v", p.Name, sc.field, err)
		}
	}
	return nil
}

// same reports whether two reads of a plugin are byte-for-byte the same plugin, so that a
// spurious event (a touch, an editor's swap file) does not recompile it.
func same(a, b *plugins.Plugin) bool {
	return a != nil && b != nil && a.Fingerprint() == b.Fingerprint()
}
