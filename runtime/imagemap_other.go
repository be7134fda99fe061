//go:build !(linux && (amd64 || arm64))

package runtime

import "errors"

// Where copy-on-write mappings are not implemented (imagemap_linux.go), instances copy the
// image into their memory.

// mapsImages: this build maps images copy-on-write.
const mapsImages = false

type imageFile struct{}

func newImageFile(*image) (*imageFile, error) {
	return nil, errors.New("copy-on-write images are implemented on Linux (amd64, arm64) only")
}

func (*imageFile) close() {}

type mapping struct{}

func (*mapping) bytes(uint64) []byte { return nil }
func (*mapping) grow(uint64) error   { return errors.New("no mapping") }
func (*mapping) unmap()              {}

func (*linearMemory) mapFor(*imageFile) bool { return false }
