package xapi

import (
	"encoding/base64"
	"fmt"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

func TestDecodeChangedBlocks(t *testing.T) {
	const blk = CBTBlockSize
	b64 := func(b ...byte) string { return base64.StdEncoding.EncodeToString(b) }
	tests := []struct {
		name   string
		bitmap string
		size   int64
		want   []disk.Extent
		err    errs.Code
	}{
		{"empty disk", "", 0, nil, errs.Unknown},
		{"nothing changed", b64(0, 0), 16 * blk, nil, errs.Unknown},
		{"first block: most significant bit", b64(0x80), 8 * blk, []disk.Extent{{Off: 0, Len: blk}}, errs.Unknown},
		{"last bit of the byte", b64(0x01), 8 * blk, []disk.Extent{{Off: 7 * blk, Len: blk}}, errs.Unknown},
		{"runs merge across bytes", b64(0x03, 0xC0), 16 * blk, []disk.Extent{{Off: 6 * blk, Len: 4 * blk}}, errs.Unknown},
		{"two runs", b64(0xA0), 8 * blk, []disk.Extent{{Off: 0, Len: blk}, {Off: 2 * blk, Len: blk}}, errs.Unknown},
		{"last block clipped to the size", b64(0x01), 7*blk + 512, []disk.Extent{{Off: 7 * blk, Len: 512}}, errs.Unknown},
		{"bits past the end ignored", b64(0x3F), 2 * blk, nil, errs.Unknown},
		{"bitmap with a spare byte", b64(0xFF, 0xFF), 8 * blk, []disk.Extent{{Off: 0, Len: 8 * blk}}, errs.Unknown},
		{"unpadded base64", "gA", 8 * blk, []disk.Extent{{Off: 0, Len: blk}}, errs.Unknown},
		{"wrapped base64", "gA=\n=", 8 * blk, []disk.Extent{{Off: 0, Len: blk}}, errs.Unknown},
		{"too short for the disk", b64(0xFF), 9 * blk, nil, errs.Corrupt},
		{"not base64", "!!!", 8 * blk, nil, errs.Corrupt},
		{"negative size", "", -1, nil, errs.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeChangedBlocks(tt.bitmap, tt.size)
			if tt.err != errs.Unknown {
				if errs.CodeOf(err) != tt.err {
					t.Fatalf("error %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for i := range tt.want {
				tt.want[i].Kind = disk.Data
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestEncodeChangedBlocksRoundTrip(t *testing.T) {
	size := int64(100*CBTBlockSize + 4096)
	exts := []disk.Extent{{Off: 100, Len: 10}, {Off: 5 * CBTBlockSize, Len: 3 * CBTBlockSize}, {Off: size - 1, Len: 1}}
	got, err := DecodeChangedBlocks(EncodeChangedBlocks(exts, size), size)
	if err != nil {
		t.Fatal(err)
	}
	want := []disk.Extent{{Off: 0, Len: CBTBlockSize, Kind: disk.Data}, {Off: 5 * CBTBlockSize, Len: 3 * CBTBlockSize, Kind: disk.Data}, {Off: 100 * CBTBlockSize, Len: 4096, Kind: disk.Data}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestChangedBlocksCall(t *testing.T) {
	f := newFake(t)
	size := int64(16 * CBTBlockSize)
	f.handle("VDI.get_virtual_size", func(p []any) (any, *Error) { return size, nil })
	f.handle("VDI.list_changed_blocks", func(p []any) (any, *Error) {
		if p[1] != "OpaqueRef:from" || p[2] != "OpaqueRef:to" {
			return nil, &Error{Code: "HANDLE_INVALID", Params: []string{"VDI"}}
		}
		return base64.StdEncoding.EncodeToString([]byte{0x40, 0x01}), nil
	})
	c, _ := New(f.srv.URL, nil)
	got, err := c.ChangedBlocks(t.Context(), "OpaqueRef:from", "OpaqueRef:to")
	if err != nil {
		t.Fatal(err)
	}
	want := []disk.Extent{{Off: CBTBlockSize, Len: CBTBlockSize, Kind: disk.Data}, {Off: 15 * CBTBlockSize, Len: CBTBlockSize, Kind: disk.Data}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v", got)
	}
	if _, err := c.ChangedBlocks(t.Context(), "", "OpaqueRef:to"); !errs.Is(err, errs.InvalidArgument) {
		t.Errorf("null ref: %v", err)
	}
}
