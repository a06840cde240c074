package ebsdirect

import (
	"testing"

	"github.com/ferry-project/ferry/internal/errs"
)

func TestCheckpointRoundTrip(t *testing.T) {
	for _, gib := range []int64{1, 3, 17} {
		cp := Checkpoint{SnapshotID: "snap-0123", ClientToken: "tok", VolumeGiB: gib, Sent: NewBitmap(gib * blocksPerGiB), Completed: gib == 3}
		for _, i := range []int64{0, 1, 63, 64, 65, gib*blocksPerGiB - 1} {
			cp.Sent.Set(i)
		}
		b, err := cp.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var got Checkpoint
		if err := got.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
		if got.SnapshotID != cp.SnapshotID || got.ClientToken != cp.ClientToken || got.VolumeGiB != gib || got.Completed != cp.Completed || got.Sent.Count() != cp.Sent.Count() {
			t.Fatalf("round trip: %+v, want %+v", got, cp)
		}
		for i := range cp.Sent.Len() {
			if got.Sent.Has(i) != cp.Sent.Has(i) {
				t.Fatalf("block %d differs", i)
			}
		}
	}
}

func TestCheckpointRefusals(t *testing.T) {
	tests := []struct{ name, in string }{
		{"not json", "x"},
		{"version", `{"v":2,"volume_gib":1,"blocks":2048}`},
		{"size mismatch", `{"v":1,"volume_gib":1,"blocks":2047,"sent":""}`},
		{"bitmap length", `{"v":1,"volume_gib":1,"blocks":2048,"sent":"AA=="}`},
		{"bad base64", `{"v":1,"volume_gib":1,"blocks":2048,"sent":"!"}`},
		{"negative", `{"v":1,"volume_gib":-1,"blocks":-2048}`},
		{"huge", `{"v":1,"volume_gib":99999999,"blocks":0}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cp Checkpoint
			if err := cp.UnmarshalBinary([]byte(tt.in)); !errs.Is(err, errs.InvalidArgument) {
				t.Fatalf("err = %v, want invalid argument", err)
			}
		})
	}
}

func FuzzCheckpoint(f *testing.F) {
	cp := Checkpoint{SnapshotID: "snap-1", ClientToken: "t", VolumeGiB: 1, Sent: NewBitmap(blocksPerGiB)}
	cp.Sent.Set(5)
	b, _ := cp.MarshalBinary()
	f.Add(b)
	f.Add([]byte(`{"v":1,"volume_gib":0,"blocks":0}`))
	f.Add([]byte(`{"v":1,"volume_gib":1,"blocks":2048,"sent":""}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var cp Checkpoint
		if err := cp.UnmarshalBinary(b); err != nil {
			if !errs.Is(err, errs.InvalidArgument) {
				t.Fatalf("error without code: %v", err)
			}
			return
		}
		if cp.Sent.Len() != cp.VolumeGiB*blocksPerGiB || cp.Sent.Count() > cp.Sent.Len() {
			t.Fatalf("inconsistent checkpoint %+v", cp)
		}
		again, err := cp.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var cp2 Checkpoint
		if err := cp2.UnmarshalBinary(again); err != nil || cp2.Sent.Count() != cp.Sent.Count() {
			t.Fatalf("re-decode: %v", err)
		}
	})
}
