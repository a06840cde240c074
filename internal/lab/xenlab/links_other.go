//go:build !unix

package xenlab

import "os"

// canShare: without a link count, a shared file could not be told from
// one of its own, so VDIs do not share files here.
const canShare = false

func linkCount(os.FileInfo) (uint64, bool) { return 0, false }
