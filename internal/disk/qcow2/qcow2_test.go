package qcow2

import (
	"testing"

	"github.com/ferry-project/ferry/internal/disk/disktest"
)

// variant is a writer configuration the tests cover.
type variant struct {
	name string
	opts map[string]string
}

var variants = []variant{
	{name: "plain"},
	{name: "c512", opts: map[string]string{"cluster_size": "512"}},
	{name: "c4k", opts: map[string]string{"cluster_size": "4096"}},
	{name: "c2m", opts: map[string]string{"cluster_size": "2097152"}},
	{name: "v2", opts: map[string]string{"compat": "0.10"}},
	{name: "zlib", opts: map[string]string{"compress": "on"}},
	{name: "zstd", opts: map[string]string{"compress": "on", "compression_type": "zstd"}},
	{name: "v2-zlib", opts: map[string]string{"compress": "on", "compat": "0.10"}},
	{name: "zlib-c512", opts: map[string]string{"compress": "on", "cluster_size": "512"}},
	{name: "zstd-c2m", opts: map[string]string{"compress": "on", "compression_type": "zstd", "cluster_size": "2097152"}},
}

func TestFormat(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			disktest.TestFormat(t, Format(), disktest.FormatOptions{Create: v.opts})
		})
	}
}
