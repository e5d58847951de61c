// Command hearth is the hearth daemon and its command line.
package main

import (
	"os"

	"github.com/hearth-project/hearth/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
