package ova

import "github.com/ferry-project/ferry/internal/disk/archive"

// Format returns the OVA archive format descriptor. Create's -o keys are
// manifest (sha256 | sha1) and nic_type (vmxnet3 | e1000).
func Format() *archive.Format {
	return &archive.Format{
		Name:       "ova",
		Probe:      probe,
		Open:       open,
		OpenStream: openStream,
		Create:     create,
		Options:    createOptions(),
	}
}
