package server

import (
	"errors"
	"sync"
	"testing"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestRegistrationExchangedOnce: the same registration token exchanged by many callers at
// once yields exactly one worker token; every other caller is told it was used.
func TestRegistrationExchangedOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	st := e.s.Store()
	reg, err := st.CreateTokenFor(t.Context(), api.TokenCreateRequest{Role: api.RoleRegistration, Pool: "alpha", TTLSeconds: 600}, e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	p, err := st.Authenticate(t.Context(), reg.Secret)
	if err != nil {
		t.Fatal(err)
	}
	const n = 16
	var wg sync.WaitGroup
	results := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := st.ExchangeRegistration(t.Context(), p, "w", e.clock.Now())
			results <- err
		}()
	}
	wg.Wait()
	close(results)
	ok := 0
	for err := range results {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrRegistrationUsed):
			t.Fatalf("ExchangeRegistration() = %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d exchanges succeeded, want 1", ok)
	}
	if _, err := st.Authenticate(t.Context(), reg.Secret); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("Authenticate(used registration token) = %v, want ErrTokenInvalid", err)
	}
}
