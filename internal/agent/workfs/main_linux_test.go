package workfs

import (
	"os"
	"testing"

	"github.com/hearth-project/hearth/test/testrun"
)

// The trees these tests make, and the shell processes that change them,
// go with the test binary however it ends.
func TestMain(m *testing.M) { os.Exit(testrun.Main(m)) }
