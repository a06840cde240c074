// Package formats lists every disk format ferry knows, in probe order. It
// is the one place where formats are put together; nothing registers
// itself.
package formats

import (
	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/archive"
	"github.com/ferry-project/ferry/internal/disk/ova"
	"github.com/ferry-project/ferry/internal/disk/qcow2"
	"github.com/ferry-project/ferry/internal/disk/raw"
	"github.com/ferry-project/ferry/internal/disk/vdi"
	"github.com/ferry-project/ferry/internal/disk/vhd"
	"github.com/ferry-project/ferry/internal/disk/vhdx"
	"github.com/ferry-project/ferry/internal/disk/vmdk"
	"github.com/ferry-project/ferry/internal/disk/xva"
)

// Registry returns a registry of all formats. Raw claims any file and
// comes last.
func Registry() *disk.Registry {
	return disk.NewRegistry(
		qcow2.Format(),
		vhdx.Format(),
		vmdk.Format(),
		vdi.Format(),
		vhd.Format(),
		raw.Format(),
	)
}

// Archives returns the whole-VM archive formats, probed before disk formats.
func Archives() []*archive.Format {
	return []*archive.Format{xva.Format(), ova.Format()}
}
