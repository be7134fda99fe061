package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/internal/logging"
	"github.com/castellan-dev/castellan/internal/tasks"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/policy"
	"github.com/castellan-dev/castellan/redact"
	"github.com/castellan-dev/castellan/runtime"
	"github.com/castellan-dev/castellan/secrets"
)

// RunConfig is the configuration of `castellan run`.
type RunConfig struct {
	Policy    string // policy file
	Task      string // task name in the policy
	Input     string // JSON text, or @FILE
	JobID     string // optional; default random
	CacheDir  string // compilation cache; "" for the user cache dir, "off" for none
	LogLevel  string
	LogFormat string
	Plugins   string // plugins directory, for tasks granted to plugins
}

func runCommand() *cli.Command {
	var cfg RunConfig
	return &cli.Command{
		Name:  "run",
		Usage: "run one task locally under a policy and print its output",
		Description: "Loads the policy, compiles the task's module, runs one job in a fresh sandbox and prints the\n" +
			"task's output on stdout. Credentials are read on this host and injected into the task's\n" +
			"HTTP calls; the task never sees them. Exit status: 0 success, 1 the task failed (stderr has\n" +
			"\"<outcome>: <message>\"), 2 usage or configuration error.\n\n" +
			"Examples:\n" +
			"  castellan run --policy policy.yaml --task crm-lookup --input '{\"customer_id\":\"42\"}'\n" +
			"  castellan run --policy policy.yaml --task crm-lookup --input @job.json --log-level info",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "policy", Usage: "policy `FILE`", EnvVars: []string{"CASTELLAN_POLICY"}, Destination: &cfg.Policy, Required: true},
			&cli.StringFlag{Name: "task", Usage: "task `NAME` from the policy", EnvVars: []string{"CASTELLAN_TASK"}, Destination: &cfg.Task, Required: true},
			&cli.StringFlag{Name: "input", Usage: "job input: JSON text, or @FILE", EnvVars: []string{"CASTELLAN_INPUT"}, Value: "{}", Destination: &cfg.Input},
			&cli.StringFlag{Name: "job-id", Usage: "job `ID` for logs and audit (default random)", EnvVars: []string{"CASTELLAN_JOB_ID"}, Destination: &cfg.JobID},
			&cli.StringFlag{Name: "cache-dir", Usage: "compilation cache `DIR` (\"off\" to disable)", EnvVars: []string{"CASTELLAN_CACHE_DIR"}, Destination: &cfg.CacheDir},
			&cli.StringFlag{Name: "plugins", Usage: "plugins `DIR` (for tasks the policy grants to a plugin)", EnvVars: []string{"CASTELLAN_PLUGINS"}, Destination: &cfg.Plugins},
			&cli.StringFlag{Name: "log-level", Usage: "debug, info, warn or error", EnvVars: []string{"CASTELLAN_LOG_LEVEL"}, Value: "warn", Destination: &cfg.LogLevel},
			&cli.StringFlag{Name: "log-format", Usage: "console or json", EnvVars: []string{"CASTELLAN_LOG_FORMAT"}, Value: "console", Destination: &cfg.LogFormat},
		},
		Action: func(c *cli.Context) error {
			return Run(c.Context, cfg, c.App.Writer, c.App.ErrWriter)
		},
	}
}

// Run runs one job as configured, writing the output to stdout and logs plus the failure
// line to stderr.
func Run(ctx context.Context, cfg RunConfig, stdout, stderr io.Writer) error {
	input, err := readInput(cfg.Input)
	if err != nil {
		return usageError{err}
	}
	pol, err := policy.Load(cfg.Policy)
	if err != nil {
		return usageError{err}
	}
	if _, ok := pol.Tasks[cfg.Task]; !ok {
		return usagef("task %q is not defined in %s (tasks: %s)", cfg.Task, cfg.Policy, strings.Join(pol.TaskNames(), ", "))
	}
	red := redact.NewSet()
	log, err := logging.New(stderr, logging.Options{Level: cfg.LogLevel, Format: cfg.LogFormat, Scrub: red})
	if err != nil {
		return usageError{err}
	}
	// net/http prints an upstream's stray bytes on the standard logger: scrub them too.
	defer logging.CaptureStdlib(log)()
	defer func() { _ = log.Sync() }()

	store, err := secrets.NewStore(pol.Credentials, pol.Vault, red, log.Named("secrets"))
	if err != nil {
		return usageError{err}
	}
	defer store.Close()
	// Load every credential now so the output guard and the log scrubber know all values,
	// including ones this task does not use (a response could still carry one). A failure
	// here is only a warning: the task fails with credential_unavailable if it needs it.
	if err := store.Preload(ctx); err != nil {
		log.Warn("some credentials could not be loaded", zap.Error(err))
	}

	cacheDir, err := cacheDir(cfg.CacheDir)
	if err != nil {
		return usageError{err}
	}
	engine, err := runtime.NewEngine(runtime.Config{CacheDir: cacheDir, Logger: log.Named("sandbox")})
	if err != nil {
		return usageError{err}
	}
	// A task abandoned at its deadline may still be inside a host call: nothing waits on
	// closing then, the process is about to exit.
	abandoned := false
	defer func() {
		if !abandoned {
			_ = engine.Close(context.Background())
		}
	}()

	set, err := tasks.Load(ctx, tasks.Options{
		Policy: pol, Engine: engine, Secrets: store, Redactor: red, Log: log,
		Only: []string{cfg.Task}, NoPool: true, // one job: nothing to prepare ahead
		PluginsDir: cfg.Plugins,
	})
	if err != nil {
		return usageError{err}
	}
	defer func() {
		if !abandoned {
			set.Close(context.Background())
		}
	}()

	jobID := cfg.JobID
	if jobID == "" {
		jobID = "local-" + randomID()
	}
	timeout := runtime.DefaultTimeout
	if t, ok := set.Get(cfg.Task); ok && t.Policy.Limits.Timeout > 0 {
		timeout = t.Policy.Limits.Timeout
	}
	var res runtime.Result
	res, abandoned = runBounded(ctx, set, cfg.Task, jobID, input, timeout)
	log.Info("job finished", zap.String("task", cfg.Task), zap.String("job", jobID),
		zap.String("outcome", string(res.Code())), zap.Duration("duration", res.Duration),
		zap.Int("http_calls", res.HTTPCalls))
	if res.Err != nil {
		fmt.Fprintln(stderr, describe(res.Err))
		return taskFailed{res.Err}
	}
	if _, err := stdout.Write(res.Output); err != nil {
		return err
	}
	if len(res.Output) > 0 && res.Output[len(res.Output)-1] != '\n' {
		_, err = io.WriteString(stdout, "\n")
	}
	return err
}

// runOverrun is how long past its deadline `castellan run` waits for a task that has not
// stopped before it gives up on it.
const runOverrun = 2 * time.Second

// runBounded runs the job and returns at the latest runOverrun after its deadline, with a
// timeout when the sandbox did not end the job by then (a host call that ignores the
// deadline); abandoned says so.
func runBounded(ctx context.Context, set *tasks.Set, task, jobID string, input []byte, timeout time.Duration) (res runtime.Result, abandoned bool) {
	done := make(chan runtime.Result, 1)
	start := time.Now()
	go func() { done <- set.Run(ctx, task, jobID, input) }()
	t := time.NewTimer(timeout + runOverrun)
	defer t.Stop()
	select {
	case res = <-done:
		return res, false
	case <-t.C:
		return runtime.Result{Duration: time.Since(start), Err: outcome.New(outcome.Timeout,
			"the task did not stop at its %s deadline; abandoned", timeout)}, true
	}
}

// readInput returns the job input: JSON text or the contents of @FILE, which must be JSON.
func readInput(s string) ([]byte, error) {
	b := []byte(s)
	src := "--input"
	if strings.HasPrefix(s, "@") {
		var err error
		if b, err = os.ReadFile(s[1:]); err != nil {
			return nil, fmt.Errorf("--input: %w", err)
		}
		src = s[1:]
	}
	if !json.Valid(b) {
		return nil, fmt.Errorf("%s: the job input must be a JSON document", src)
	}
	return b, nil
}

func cacheDir(flag string) (string, error) {
	switch flag {
	case "off":
		return "", nil
	case "":
		dir, err := os.UserCacheDir()
		if err != nil {
			return "", nil // no home: run without a persistent cache
		}
		return filepath.Join(dir, "castellan", "wazero"), nil
	}
	return flag, nil
}

func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
