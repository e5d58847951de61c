// Command hearth is the hearth daemon and its command line.
package main

import (
	"os"

	"github.com/hearth-project/hearth/internal/app"
)

func main() {
	os.Exit(app.Main(os.Args[1:], os.Stdout, os.Stderr))
}
