package cli

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// jobCommand is a placeholder replaced by the file's owner.
func jobCommand() *cli.Command {
	return &cli.Command{Name: "job", Hidden: true, Action: func(*cli.Context) error { return errors.New("job: not built yet") }}
}
