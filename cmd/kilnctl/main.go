// Command kilnctl is the Kiln command-line client. See package cli.
package main

import (
	"os"

	"github.com/kiln-ci/kiln/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
