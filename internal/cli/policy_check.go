package cli

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"

	"github.com/castellan-dev/castellan/policy"
)

func policyCommand() *cli.Command {
	return &cli.Command{
		Name:  "policy",
		Usage: "work with policy files",
		Subcommands: []*cli.Command{{
			Name:      "check",
			Usage:     "validate a policy file and print what it grants",
			ArgsUsage: "FILE",
			Description: "Parses FILE strictly (unknown keys, dangling references and malformed rules are errors\n" +
				"naming the line and field) and prints each task with its module, limits, endpoints, rules\n" +
				"and credential names. It reads no credential value and contacts nothing.\n\n" +
				"Example:\n  castellan policy check /etc/castellan/policy.yaml",
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return usagef("policy check: want exactly one FILE argument")
				}
				return policyCheck(c.Args().First(), c.App.Writer)
			},
		}},
	}
}

func policyCheck(path string, out io.Writer) error {
	p, err := policy.Load(path)
	if err != nil {
		return usageError{err}
	}
	if err := p.WriteSummary(out); err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "policy %s is valid\n", path)
	return err
}
