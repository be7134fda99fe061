package tasks

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/policy"
	"github.com/castellan-dev/castellan/runtime"
)

// BenchmarkPluginAppearToFirstJob measures the time from a new plugin being renamed into
// the plugins directory to the first job served by it: debounce (reported separately, set to
// 1ms here) + read + verify + compile + swap. "cold" uses a fresh engine (no cached machine
// code); "warm" reinstalls a module the engine's compilation cache already holds.
func BenchmarkPluginAppearToFirstJob(b *testing.B) {
	for _, mode := range []string{"cold", "warm"} {
		b.Run(mode, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				root := b.TempDir()
				pol, _ := policy.Parse("policy.yaml", []byte(pluginPolicy), "/")
				engine, _ := runtime.NewEngine(runtime.Config{})
				set, err := Load(context.Background(), Options{Policy: pol, Engine: engine, Log: zap.NewNop(), PluginsDir: root, Debounce: time.Millisecond, NoPool: true})
				if err != nil {
					b.Fatal(err)
				}
				t := &testing.T{}
				if mode == "warm" {
					install(t, root, "other", "1", testdata+"/v1.wasm") // same bytes as hot: compiled once, cached
					for output(set, "other") != "version-v1" {
						time.Sleep(100 * time.Microsecond)
					}
				}
				b.StartTimer()
				install(t, root, "hot", fmt.Sprint(i), testdata+"/v1.wasm")
				for output(set, "hot") != "version-v1" {
					time.Sleep(50 * time.Microsecond)
				}
				b.StopTimer()
				set.Close(context.Background())
				_ = engine.Close(context.Background())
			}
		})
	}
}
