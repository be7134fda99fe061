package cli

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// pluginCommand is a placeholder replaced by the file's owner.
func pluginCommand() *cli.Command {
	return &cli.Command{Name: "plugin", Hidden: true, Action: func(*cli.Context) error { return errors.New("plugin: not built yet") }}
}
