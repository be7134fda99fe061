package cli

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// tokenCommand is a placeholder replaced by the file's owner.
func tokenCommand() *cli.Command {
	return &cli.Command{Name: "token", Hidden: true, Action: func(*cli.Context) error { return errors.New("token: not built yet") }}
}
