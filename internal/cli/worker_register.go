package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/castellan-dev/castellan/internal/client"
)

// registeredTokenName is the worker token a registration token was exchanged for, in
// STATE-DIR: a restart uses it instead of the (used up) registration token.
const registeredTokenName = "worker.token"

// registeredTokenFile returns the token file of a worker started with
// --registration-token-file: STATE-DIR/worker.token when an earlier start exchanged the
// registration token already, else the exchange's worker token, written there first (0600,
// atomically, so a crash leaves the old file or the whole new one).
func registeredTokenFile(ctx context.Context, cfg WorkerConfig, stateDir, name string) (string, error) {
	path := filepath.Join(stateDir, registeredTokenName)
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) != "" {
		return path, nil
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", usagef("--state-dir: the stored worker token: %v", err)
	}
	b, err := os.ReadFile(cfg.RegistrationTokenFile)
	if err != nil {
		return "", usagef("--registration-token-file: %v", err)
	}
	reg := strings.TrimSpace(string(b))
	if reg == "" {
		return "", usagef("--registration-token-file %s is empty: put a token from `castellan token create --role registration` in it", cfg.RegistrationTokenFile)
	}
	ca, err := controlPlaneCA(cfg.CAFile)
	if err != nil {
		return "", err
	}
	c, err := client.New(cfg.Server, reg, client.WithUserAgent("castellan-worker/"+Version), ca)
	if err != nil {
		return "", usagef("--server: %v", err)
	}
	tok, err := c.ExchangeRegistration(ctx, name)
	if err != nil {
		var ae *client.APIError
		if errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500 && ae.Status != http.StatusTooManyRequests {
			return "", usagef("the control plane refused the registration token in %s (%d %s: %s): create a new one with `castellan token create --role registration --pool P --ttl 1h`",
				cfg.RegistrationTokenFile, ae.Status, ae.Code, ae.Message)
		}
		return "", taskFailed{fmt.Errorf("exchange the registration token: %w", err)}
	}
	if err := writePrivateFile(path, []byte(tok.Secret+"\n")); err != nil {
		// The registration token is used up: the worker token exists only in this error's
		// absence, so say what to do rather than print it.
		return "", usagef("store the worker token %s in --state-dir: %v (revoke it with `castellan token revoke %s` and register again)", tok.ID, err, tok.ID)
	}
	return path, nil
}

// writePrivateFile writes data to path for its owner only, through a temporary file in the
// same directory renamed over it.
func writePrivateFile(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename there is nothing left to remove
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
