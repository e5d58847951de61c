package ext4

// MaxPathLen is the longest path the reader accepts, for the tests outside
// the package.
const MaxPathLen = ext4MaxPathLen
