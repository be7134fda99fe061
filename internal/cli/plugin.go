package cli

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"

	"github.com/castellan-dev/castellan/plugins"
)

// PluginSignConfig is the configuration of `castellan plugin sign`.
type PluginSignConfig struct {
	Key    string // private JWK file
	Plugin string // plugin directory, or a file inside it
}

// PluginVerifyConfig is the configuration of `castellan plugin verify`.
type PluginVerifyConfig struct {
	Trusted []string // public key files (JWKS or JWK)
	Plugin  string
}

func pluginCommand() *cli.Command {
	var sc PluginSignConfig
	var vc PluginVerifyConfig
	return &cli.Command{
		Name:  "plugin",
		Usage: "sign and verify task plugins",
		Subcommands: []*cli.Command{{
			Name:      "sign",
			Usage:     "sign a plugin with an Ed25519 publisher key",
			ArgsUsage: "DIR_OR_WASM",
			Description: "Writes DIR/plugin.sig: a compact JWS (EdDSA, kid of the key) over the plugin's name,\n" +
				"version and the SHA-256 of plugin.yaml, the module and any schema files. Workers whose\n" +
				"policy lists the public key under plugins.trusted_publishers accept it; any later change\n" +
				"to those files makes them refuse it until it is signed again.\n\n" +
				"Example:\n  castellan plugin sign --key acme.private.jwk.json plugins/crm-lookup",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "key", Usage: "private JWK `FILE` (from castellan keygen)", Destination: &sc.Key, Required: true},
			},
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return usagef("plugin sign: want exactly one DIR_OR_WASM argument")
				}
				sc.Plugin = c.Args().First()
				return PluginSign(sc, c.App.Writer)
			},
		}, {
			Name:      "verify",
			Usage:     "check a plugin's signature against trusted publisher keys",
			ArgsUsage: "DIR_OR_WASM",
			Description: "Verifies DIR/plugin.sig against the given public keys and the files on disk, as the\n" +
				"worker does at load. Exit status 0 when valid, 2 otherwise.\n\n" +
				"Example:\n  castellan plugin verify --trusted acme.public.jwks.json plugins/crm-lookup",
			Flags: []cli.Flag{
				&cli.StringSliceFlag{Name: "trusted", Usage: "public key `FILE` (JWKS or JWK); repeatable", Required: true},
			},
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return usagef("plugin verify: want exactly one DIR_OR_WASM argument")
				}
				vc.Plugin = c.Args().First()
				vc.Trusted = c.StringSlice("trusted")
				return PluginVerify(vc, c.App.Writer)
			},
		}},
	}
}

// PluginSign signs a plugin and prints where the signature went.
func PluginSign(cfg PluginSignConfig, out io.Writer) error {
	path, err := plugins.Sign(cfg.Plugin, cfg.Key)
	if err != nil {
		return usageError{err}
	}
	_, err = fmt.Fprintf(out, "wrote %s\n", path)
	return err
}

// PluginVerify verifies a plugin's signature and prints the signer.
func PluginVerify(cfg PluginVerifyConfig, out io.Writer) error {
	trust, err := plugins.LoadTrust(cfg.Trusted...)
	if err != nil {
		return usageError{err}
	}
	sig, err := plugins.Verify(cfg.Plugin, trust)
	if err != nil {
		return usageError{err}
	}
	_, err = fmt.Fprintf(out, "%s: valid signature by %s over %d files\n", cfg.Plugin, sig.KeyID, len(sig.Files))
	return err
}
