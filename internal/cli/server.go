package cli

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// serverCommand is a placeholder replaced by the file's owner.
func serverCommand() *cli.Command {
	return &cli.Command{Name: "server", Hidden: true, Action: func(*cli.Context) error { return errors.New("server: not built yet") }}
}
