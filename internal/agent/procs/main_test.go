package procs

import (
	"os"
	"testing"

	"github.com/hearth-project/hearth/test/testrun"
)

// The processes these tests start go with the test binary however it
// ends, and a run that leaves any fails.
func TestMain(m *testing.M) { os.Exit(testrun.Main(m)) }
