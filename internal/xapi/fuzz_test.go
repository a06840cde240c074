package xapi

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
)

// FuzzDecodeResponse feeds arbitrary bytes to the JSON-RPC response
// decoder, into the record types ferry reads: it must never panic, and a
// result it accepts must decode the same way twice.
func FuzzDecodeResponse(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"result":"OpaqueRef:a"}`,
		`{"jsonrpc":"2.0","id":1,"result":{"OpaqueRef:a":{"name_label":"x","VCPUs_max":2,"HVM_shadow_multiplier":Infinity,"snapshot_time":"20240101T00:00:00Z"}}}`,
		`{"id":1,"result":null,"error":["HANDLE_INVALID","VM","OpaqueRef:a"]}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"SESSION_INVALID","data":"OpaqueRef:s"}}`,
		`{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":"abcd","message":123456,"data":2.0}}`,
		`{"result":{"events":[{"id":1,"snapshot":{"status":"success"}}],"token":"t","validRefCounts":{}}}`,
		`{"result":[NaN,-Infinity,+Infinity,"NaN"]}`,
		`{"result":"\"NaN\\"}`,
		`[`, `{"result":`, ``,
	} {
		f.Add([]byte(s), 200)
	}
	// The recorded transcripts' answers, when present.
	if files, _ := filepath.Glob(filepath.Join("..", "..", "..", "shared", "xapi", "transcripts", "*.json")); len(files) > 0 {
		for _, p := range files {
			b, err := os.ReadFile(p)
			if err == nil {
				f.Add(b, 200)
			}
		}
	}
	f.Add([]byte(`{"error":{"code":1,"message":"HOST_STILL_BOOTING"}}`), 503)
	c, err := New("http://fuzz.invalid", nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte, status int) {
		if status < 100 || status > 599 {
			status = 200
		}
		targets := []func() any{
			func() any { return new(map[VMRef]VMRecord) },
			func() any { return new(VDIRecord) },
			func() any { return new(TaskRecord) },
			func() any { return new(eventBatchWire) },
			func() any { return new([]string) },
			func() any { return new(string) },
			func() any { return new(float64) },
		}
		for _, mk := range targets {
			r1 := mk()
			err1 := c.decodeResponse("fuzz.call", status, raw, nil, r1)
			var xe *Error
			if errors.As(err1, &xe) && xe.Code == "" {
				t.Fatalf("error with an empty code: %#v", xe)
			}
			if err1 != nil {
				continue
			}
			r2 := mk()
			if err := c.decodeResponse("fuzz.call", status, raw, nil, r2); err != nil {
				t.Fatalf("second decode failed: %v", err)
			}
		}
	})
}

// FuzzDecodeChangedBlocks: any bitmap decodes to ascending, disjoint
// Data extents inside the disk, or to an error.
func FuzzDecodeChangedBlocks(f *testing.F) {
	f.Add(base64.StdEncoding.EncodeToString([]byte{0x80, 0x01}), int64(16*CBTBlockSize))
	f.Add("", int64(0))
	f.Add("gA", int64(CBTBlockSize+1))
	f.Add("////", int64(3*CBTBlockSize-5))
	f.Add("!!", int64(1))
	f.Fuzz(func(t *testing.T, b64 string, size int64) {
		size %= 1 << 40
		exts, err := DecodeChangedBlocks(b64, size)
		if err != nil {
			return
		}
		var end int64
		for i, e := range exts {
			if e.Kind != disk.Data || e.Len <= 0 || e.Off < end || e.End() > size {
				t.Fatalf("extent %d %+v bad (previous end %d, size %d)", i, e, end, size)
			}
			if i > 0 && e.Off == end {
				t.Fatalf("extent %d %+v not merged with the previous", i, e)
			}
			end = e.End()
		}
	})
}

// FuzzDiffAsDynamic: the stream adaptor passes any byte stream through
// unchanged unless it starts with a differencing VHD footer.
func FuzzDiffAsDynamic(f *testing.F) {
	f.Add([]byte("conectix"), 3)
	f.Add(bytes.Repeat([]byte{1}, 1500), 511)
	f.Fuzz(func(t *testing.T, b []byte, chunk int) {
		if chunk <= 0 {
			chunk = 1
		}
		got, err := io.ReadAll(&diffAsDynamic{r: &chunkReader{b: b, n: chunk}})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(b) {
			t.Fatalf("%d bytes out of %d", len(got), len(b))
		}
		if !bytes.Equal(got, b) && !(len(b) >= 512 && string(b[:8]) == "conectix") {
			t.Fatal("changed a stream that is not a VHD")
		}
	})
}

// FuzzParseFingerprint: a parsed fingerprint prints back to itself.
func FuzzParseFingerprint(f *testing.F) {
	f.Add("AB:" + strings.Repeat("01:", 30) + "FF")
	f.Add("sha256:" + strings.Repeat("ab", 32))
	f.Add("SHA256 Fingerprint=" + strings.Repeat("0F:", 31) + "0F")
	f.Add("12:34")
	f.Fuzz(func(t *testing.T, s string) {
		fp, err := ParseFingerprint(s)
		if err != nil {
			return
		}
		again, err := ParseFingerprint(hex.EncodeToString(fp[:]))
		if err != nil || again != fp {
			t.Fatalf("%q: %x does not parse back (%v)", s, fp, err)
		}
	})
}
