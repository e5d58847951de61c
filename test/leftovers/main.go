// Command leftovers removes what hearth's test processes left on this host
// after they ended — processes (guests, daemons, fake Firecrackers,
// browsers), mounts, network namespaces and directories (see
// test/testrun) — and lists it. `make test` runs it before the tests (to
// clear what an earlier, interrupted run left) and after them with
// -check, which fails the run if anything of its own was left.
//
//	leftovers [-check] [-run ID]
//
// -run ID also counts every process marked with HEARTH_TEST_RUN=ID (set by
// scripts/test.sh for all of one run's tests) as left behind.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/hearth-project/hearth/test/testrun"
)

func main() {
	check := flag.Bool("check", false, "exit 1 if anything was left behind")
	run := flag.String("run", "", "also count processes of this test run (HEARTH_TEST_RUN)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "leftovers: not root: only this user's processes and files are looked at")
	}
	left := testrun.Abandoned(*run)
	if len(left) == 0 {
		if *check {
			fmt.Println("leftovers: the tests left nothing behind")
		}
		return
	}
	fmt.Fprintf(os.Stderr, "leftovers: %d things left behind by tests that have ended:\n", len(left))
	for _, l := range left {
		fmt.Fprintf(os.Stderr, "  %s\n", l)
	}
	if err := testrun.Remove(left); err != nil {
		fmt.Fprintf(os.Stderr, "leftovers: %v\n", err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, "leftovers: removed")
	if *check {
		os.Exit(1)
	}
}
