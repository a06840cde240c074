package awslab

import "unsafe"

// directAlign is the alignment direct I/O needs of buffers (the logical
// block size of any disk the lab runs on divides it).
const directAlign = 4096

// alignedBlock allocates a blockSize buffer aligned to directAlign.
func alignedBlock() []byte {
	raw := make([]byte, blockSize+directAlign)
	k := int(uintptr(unsafe.Pointer(unsafe.SliceData(raw))) & (directAlign - 1))
	return raw[(directAlign-k)%directAlign:][:blockSize:blockSize]
}

// aligned reports whether p starts at a directAlign boundary.
func aligned(p []byte) bool {
	return len(p) > 0 && uintptr(unsafe.Pointer(unsafe.SliceData(p)))%directAlign == 0
}
