package mcp

import (
	"log/slog"

	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
)

// SlogLogger is z as the *slog.Logger that Options.Logger and the SDK take, so that MCP
// lines go through the process's own zap core: the same encoding (JSON lines with
// --log-format json), level and scrubbing sink as every other line, under z's name.
//
// Neither this layer nor the SDK logs a bearer token, a call's arguments or a job's
// output: this layer logs names, ids and API error codes (safeErr), the SDK protocol
// events (TestLogsCarryNoSecretOrValue).
func SlogLogger(z *zap.Logger) *slog.Logger {
	return slog.New(zapslog.NewHandler(z.Core(), zapslog.WithName(z.Name())))
}
