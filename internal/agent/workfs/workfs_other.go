//go:build !linux

package workfs

import "net/http"

// routes answers every file route with an error: acting as a user
// relies on Linux's per-thread filesystem credentials.
func (s *server) routes(mux *http.ServeMux) {
	mux.HandleFunc("/files", notLinux)
	mux.HandleFunc("/files/", notLinux)
}

func notLinux(w http.ResponseWriter, _ *http.Request) {
	writeError(w, fail(http.StatusInternalServerError, "the file routes need a Linux guest"))
}
