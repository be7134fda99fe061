package cli

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// workerCommand is a placeholder replaced by the file's owner.
func workerCommand() *cli.Command {
	return &cli.Command{Name: "worker", Hidden: true, Action: func(*cli.Context) error { return errors.New("worker: not built yet") }}
}
