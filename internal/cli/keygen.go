package cli

import (
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/castellan-dev/castellan/approval"
)

// KeygenConfig is the configuration of `castellan keygen`.
type KeygenConfig struct {
	Out  string // directory
	Name string // key id and file name stem
}

func keygenCommand() *cli.Command {
	var cfg KeygenConfig
	return &cli.Command{
		Name:  "keygen",
		Usage: "create an Ed25519 approver key pair (private JWK + public JWKS)",
		Description: "Writes OUT/NAME.private.jwk.json (mode 0600: keep it on the approver's machine, it signs\n" +
			"approvals with `castellan job approve --key`) and OUT/NAME.public.jwks.json (give it to the\n" +
			"workers: --trusted-keys). NAME becomes the key id; make it unique, e.g. alice-2026-11.\n" +
			"Existing files are never overwritten.\n\n" +
			"Examples:\n" +
			"  castellan keygen --out ~/.castellan --name alice-2026-11\n" +
			"  castellan keygen --out /etc/castellan/auto --name auto-approve",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Usage: "`DIR` to write the key files into", Value: ".", Destination: &cfg.Out},
			&cli.StringFlag{Name: "name", Usage: "key `NAME` (the key id)", Required: true, Destination: &cfg.Name},
		},
		Action: func(c *cli.Context) error { _, _, err := Keygen(cfg, c.App.Writer); return err },
	}
}

// Keygen writes a new key pair and prints the paths and the public JWKS.
func Keygen(cfg KeygenConfig, out io.Writer) (privPath, pubPath string, err error) {
	if err := os.MkdirAll(cfg.Out, 0o700); err != nil {
		return "", "", usagef("--out: %v", err)
	}
	privPath, pubPath, err = approval.WriteKeyFiles(cfg.Out, cfg.Name)
	if err != nil {
		return "", "", usageError{err}
	}
	pub, err := os.ReadFile(pubPath)
	if err != nil {
		return "", "", err
	}
	fmt.Fprintf(out, "private key: %s (keep it on this machine)\npublic keys: %s (give it to the workers: --trusted-keys)\n%s", privPath, pubPath, pub)
	if len(pub) > 0 && pub[len(pub)-1] != '\n' {
		fmt.Fprintln(out)
	}
	return privPath, pubPath, nil
}
