package natsq

import (
	"go/parser"
	gotoken "go/token"
	"path/filepath"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestEnsureDoesNotUpdateUnchanged: the streams and buckets every replica and worker ensures
// at start are updated only when a setting differs. (An update of an unchanged stream
// rewrote its configuration on every start, racing in nats-server with consumers being
// added.) The server announces each update with an advisory; none may come for an
// unchanged one, and one must come for a change.
func TestEnsureDoesNotUpdateUnchanged(t *testing.T) {
	t.Parallel()
	srv, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("the embedded NATS server did not start")
	}
	t.Cleanup(srv.Shutdown)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	updates, err := nc.SubscribeSync("$JS.EVENT.ADVISORY.STREAM.UPDATED.>")
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := ensureShared(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	if err := ensurePoolStream(ctx, js, "acme", 1); err != nil {
		t.Fatal(err)
	}
	// Every replica and worker start does this again:
	for range 3 {
		if err := ensureShared(ctx, js, 1); err != nil {
			t.Fatal(err)
		}
		if err := ensurePoolStream(ctx, js, "acme", 1); err != nil {
			t.Fatal(err)
		}
		if _, err := tokensKV(ctx, js, 1); err != nil {
			t.Fatal(err)
		}
	}
	if m, err := updates.NextMsg(500 * time.Millisecond); err == nil {
		t.Fatalf("an unchanged stream was updated: advisory on %s", m.Subject)
	}
	// A changed setting is applied.
	if _, err := ensureKV(ctx, js, jetstream.KeyValueConfig{Bucket: CancelBucket, History: 1, TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if m, err := updates.NextMsg(5 * time.Second); err != nil || m.Subject != "$JS.EVENT.ADVISORY.STREAM.UPDATED.KV_"+CancelBucket {
		t.Fatalf("after a TTL change: advisory %v, %v, want one for KV_%s", m, err, CancelBucket)
	}
	kv, err := js.KeyValue(ctx, CancelBucket)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := kv.Status(ctx); err != nil || st.TTL() != time.Hour {
		t.Fatalf("bucket %s TTL after the change = %v (%v), want 1h", CancelBucket, st.TTL(), err)
	}
}

// TestNoImportOfTheHTTPServer: the JetStream control plane shares the wire types and
// constants of internal/server/api, never the SQLite server itself.
func TestNoImportOfTheHTTPServer(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		parsed, err := parser.ParseFile(gotoken.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range parsed.Imports {
			if imp.Path.Value == `"github.com/castellan-dev/castellan/internal/server"` {
				t.Errorf("%s imports internal/server; share constants through internal/server/api", f)
			}
		}
	}
}
