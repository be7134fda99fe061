package cli

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// keygenCommand is a placeholder replaced by the file's owner.
func keygenCommand() *cli.Command {
	return &cli.Command{Name: "keygen", Hidden: true, Action: func(*cli.Context) error { return errors.New("keygen: not built yet") }}
}
