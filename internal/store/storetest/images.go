package storetest

import (
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/store"
)

// Image IDs: a and b share the 8-character prefix "abcdef01".
var (
	imgA = hexID("abcdef011", "1")
	imgB = hexID("abcdef012", "2")
	imgC = hexID("12345678", "3")
)

func testImages(t *testing.T, s store.Store) {
	ctx := t.Context()
	a := newImage(imgA, "minimal", at(0))
	b := newImage(imgB, "minimal", at(1)) // newest "minimal"
	c := newImage(imgC, "other", at(2))
	b.Manifest = nil
	for _, img := range []store.Image{a, b, c} {
		must(t, s.PutImage(ctx, img), "put image "+img.Name)
	}

	for _, tc := range []struct {
		ref  string
		want store.Image
	}{
		{imgA, a},
		{imgB, b},
		{"abcdef011", a}, // unique prefix
		{"abcdef012", b},
		{"12345678", c}, // unique prefix of exactly 8 characters
		{"minimal", b},  // name: the newest wins
		{"other", c},
	} {
		got, err := s.GetImage(ctx, tc.ref)
		must(t, err, "get image "+tc.ref)
		equal(t, "get image "+tc.ref, got, tc.want, normImage)
	}

	_, err := s.GetImage(ctx, "abcdef01")
	mustFail(t, err, store.ErrConflict, "get image by an ambiguous prefix")
	for _, ref := range []string{"1234567", "nothing-here", "", "abcdef013"} {
		_, err := s.GetImage(ctx, ref)
		mustFail(t, err, store.ErrNotFound, "get image "+ref)
	}

	imgs, err := s.ListImages(ctx)
	must(t, err, "list images")
	equalSet(t, "list images", imgs, []store.Image{a, b, c}, imageKey, normImage)
}

func testImagesReplaceAndDelete(t *testing.T, s store.Store) {
	ctx := t.Context()
	a := newImage(imgA, "minimal", at(0))
	b := newImage(imgB, "minimal", at(1))
	must(t, s.PutImage(ctx, a), "put a")
	must(t, s.PutImage(ctx, b), "put b")

	// Replacing a with a newer copy makes it the newest "minimal".
	a2 := newImage(imgA, "minimal", at(5))
	a2.Role = "rebuilt"
	a2.Manifest = []byte(`{"rebuilt":true}`)
	a2.SizeBytes = 42
	must(t, s.PutImage(ctx, a2), "replace a")
	got, err := s.GetImage(ctx, imgA)
	must(t, err, "get replaced a")
	equal(t, "replaced image", got, a2, normImage)
	got, err = s.GetImage(ctx, "minimal")
	must(t, err, "get minimal")
	equal(t, "newest minimal after replace", got, a2, normImage)
	imgs, err := s.ListImages(ctx)
	must(t, err, "list images")
	equalSet(t, "images after replace", imgs, []store.Image{a2, b}, imageKey, normImage)

	must(t, s.DeleteImage(ctx, imgA), "delete a")
	_, err = s.GetImage(ctx, imgA)
	mustFail(t, err, store.ErrNotFound, "get deleted image")
	mustFail(t, s.DeleteImage(ctx, imgA), store.ErrNotFound, "delete a twice")
	mustFail(t, s.DeleteImage(ctx, "abcdef01"), store.ErrNotFound, "delete by prefix")

	// With a gone, the shared prefix and the name both resolve to b.
	for _, ref := range []string{"abcdef01", "minimal"} {
		got, err := s.GetImage(ctx, ref)
		must(t, err, "get "+ref+" after delete")
		equal(t, "get "+ref+" after delete", got, b, normImage)
	}
}

// An image put without a status is unverified: nothing boots from it until
// a verifier says otherwise.
func testImageDefaultsUnverified(t *testing.T, s store.Store) {
	ctx := t.Context()
	img := newImage("feedfacefeedface", "fresh", at(0))
	img.Status, img.VerifiedAt, img.VerifyReport = "", time.Time{}, nil
	must(t, s.PutImage(ctx, img), "put image")
	got, err := s.GetImage(ctx, img.ID)
	must(t, err, "get image")
	if got.Status != store.ImageUnverified {
		t.Fatalf("status %q, want %q", got.Status, store.ImageUnverified)
	}
}
