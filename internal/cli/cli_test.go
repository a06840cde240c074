package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Execute(t.Context(), args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func writeRaw(t *testing.T, dir, name string, pt *disktest.Pattern) string {
	t.Helper()
	p := filepath.Join(dir, name)
	disktest.WriteRaw(t, pt, p)
	return p
}

func TestImageCommands(t *testing.T) {
	dir := t.TempDir()
	pt := &disktest.Pattern{Name: "a", Size: 6 << 20, Seed: 1, Data: []disk.Extent{{Off: 1 << 20, Len: 1 << 20}}}
	a := writeRaw(t, dir, "a.raw", pt)
	pt2 := *pt
	pt2.Seed = 2
	b := writeRaw(t, dir, "b.raw", &pt2)

	tests := []struct {
		name     string
		args     []string
		code     int
		stdout   []string
		stderr   []string
		noOutput string // a path that must not exist afterwards
	}{
		{name: "info", args: []string{"image", "info", a}, stdout: []string{"file format: raw", "virtual size: 6.0 MiB (6291456 bytes)"}},
		{name: "info json", args: []string{"image", "info", "--output", "json", a}, stdout: []string{`"format": "raw"`, `"virtual-size": 6291456`}},
		{name: "info missing", args: []string{"image", "info", filepath.Join(dir, "nope")}, code: 1, stderr: []string{"nope: no such file"}},
		{name: "info bad output", args: []string{"image", "info", "--output", "xml", a}, code: 1, stderr: []string{`--output "xml"`}},
		{name: "convert", args: []string{"image", "convert", "-O", "raw", a, filepath.Join(dir, "c.raw")}},
		{name: "convert json", args: []string{"image", "convert", "--output", "json", "-O", "raw", a, filepath.Join(dir, "d.raw")}, stdout: []string{`"read": 1048576`}},
		{name: "convert unknown format", args: []string{"image", "convert", "-O", "nosuch", a, filepath.Join(dir, "e")}, code: 1, stderr: []string{`unknown format "nosuch"`}, noOutput: filepath.Join(dir, "e")},
		{name: "convert unknown option", args: []string{"image", "convert", "-O", "raw", "-o", "bogus=1", a, filepath.Join(dir, "f")}, code: 1, stderr: []string{`unknown option "bogus"`}, noOutput: filepath.Join(dir, "f")},
		{name: "convert missing source", args: []string{"image", "convert", "-O", "raw", filepath.Join(dir, "nope"), filepath.Join(dir, "g")}, code: 1, stderr: []string{"no such file"}, noOutput: filepath.Join(dir, "g")},
		{name: "convert no -O", args: []string{"image", "convert", a, filepath.Join(dir, "h")}, code: 1, stderr: []string{"output-format"}},
		{name: "compare same", args: []string{"image", "compare", a, filepath.Join(dir, "c.raw")}, stdout: []string{"Images are identical."}},
		{name: "compare differ", args: []string{"image", "compare", a, b}, code: 1, stdout: []string{"Content mismatch at offset 1048576!"}},
		{name: "compare error", args: []string{"image", "compare", a, filepath.Join(dir, "nope")}, code: 2, stderr: []string{"no such file"}},
		{name: "check raw unsupported", args: []string{"image", "check", a}, code: 63, stderr: []string{"does not support checks"}},
		{name: "map", args: []string{"image", "map", a}, stdout: []string{"0x100000", "data", "unallocated"}},
		{name: "map json", args: []string{"image", "map", "--output", "json", a}, stdout: []string{`"start": 1048576`, `"kind": "data"`}},
		{name: "create", args: []string{"image", "create", "-f", "raw", filepath.Join(dir, "new.raw"), "10M"}},
		{name: "create bad size", args: []string{"image", "create", "-f", "raw", filepath.Join(dir, "new2.raw"), "ten"}, code: 1, stderr: []string{`size "ten"`}, noOutput: filepath.Join(dir, "new2.raw")},
		{name: "generate", args: []string{"image", "generate", "--fill", "0.5", filepath.Join(dir, "gen.raw"), "8M"}},
		{name: "version", args: []string{"version"}, stdout: []string{"ferry "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := run(t, tt.args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, out, errs)
			}
			for _, s := range tt.stdout {
				if !strings.Contains(out, s) {
					t.Errorf("stdout lacks %q:\n%s", s, out)
				}
			}
			for _, s := range tt.stderr {
				if !strings.Contains(errs, s) {
					t.Errorf("stderr lacks %q:\n%s", s, errs)
				}
			}
			if tt.noOutput != "" {
				if _, err := os.Stat(tt.noOutput); !os.IsNotExist(err) {
					t.Errorf("%s exists after a failed command", tt.noOutput)
				}
			}
		})
	}
	// nothing temporary left behind by any of the above
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), "ferry-tmp") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
	if st, err := os.Stat(filepath.Join(dir, "new.raw")); err != nil || st.Size() != 10<<20 {
		t.Errorf("created image: %v %v", st, err)
	}
}

func TestInfoJSONShape(t *testing.T) {
	dir := t.TempDir()
	a := writeRaw(t, dir, "a.raw", &disktest.Pattern{Name: "a", Size: 1 << 20})
	code, out, _ := run(t, "image", "info", "--output", "json", a)
	if code != 0 {
		t.Fatal(code)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"filename", "format", "virtual-size"} {
		if _, ok := m[k]; !ok {
			t.Errorf("json lacks %q: %s", k, out)
		}
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true}, {"512", 512, true}, {"4K", 4096, true}, {"10M", 10 << 20, true}, {"4G", 4 << 30, true},
		{"1T", 1 << 40, true}, {"2GiB", 2 << 30, true}, {"1g", 1 << 30, true},
		{"", 0, false}, {"-1", 0, false}, {"x", 0, false}, {"99999999999P", 0, false},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		if (err == nil) != tt.ok || (tt.ok && got != tt.want) {
			t.Errorf("parseSize(%q) = %d, %v; want %d ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestParseOptions(t *testing.T) {
	got, err := parseOptions([]string{"a=1,b=2", "c=x=y"})
	if err != nil || got["a"] != "1" || got["b"] != "2" || got["c"] != "x=y" {
		t.Fatalf("got %v %v", got, err)
	}
	if _, err := parseOptions([]string{"novalue"}); err == nil {
		t.Fatal("accepted option without =")
	}
}

func TestConvertStdin(t *testing.T) {
	dir := t.TempDir()
	pt := &disktest.Pattern{Name: "a", Size: 3 << 20, Seed: 4, Data: []disk.Extent{{Off: 4096, Len: 1 << 20}}}
	src := writeRaw(t, dir, "a.raw", pt)
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out, errb bytes.Buffer
	dst := filepath.Join(dir, "b.raw")
	if code := Execute(t.Context(), []string{"image", "convert", "-f", "raw", "-O", "raw", "-", dst}, f, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if code, o, _ := run(t, "image", "compare", src, dst); code != 0 {
		t.Fatalf("compare: %d %s", code, o)
	}
	// a pipe of raw data without a size is refused clearly
	errb.Reset()
	code := Execute(t.Context(), []string{"image", "convert", "-O", "raw", "-", filepath.Join(dir, "c.raw")}, strings.NewReader("abc"), &out, &errb)
	if code == 0 || !strings.Contains(errb.String(), "--src-size") {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "c.raw")); !os.IsNotExist(err) {
		t.Fatal("output left behind")
	}
}

// TestStreamVMDKThroughPipes converts a disk to streamOptimized VMDK on
// standard output, and that stream from standard input to qcow2: both ends
// non-seekable.
func TestStreamVMDKThroughPipes(t *testing.T) {
	dir := t.TempDir()
	pt := &disktest.Pattern{Name: "s", Size: 9<<20 + 512, Seed: 6, Data: []disk.Extent{{Off: 0, Len: 3 << 20}, {Off: 8 << 20, Len: 1<<20 + 512}}}
	src := writeRaw(t, dir, "s.raw", pt)
	var stream, errb bytes.Buffer
	if code := Execute(t.Context(), []string{"image", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", src, "-"}, strings.NewReader(""), &stream, &errb); code != 0 {
		t.Fatalf("to stdout: %d %s", code, errb.String())
	}
	if !bytes.HasPrefix(stream.Bytes(), []byte("KDMV")) {
		t.Fatal("standard output does not hold a VMDK")
	}
	dst := filepath.Join(dir, "s.qcow2")
	var out bytes.Buffer
	if code := Execute(t.Context(), []string{"image", "convert", "-O", "qcow2", "-", dst}, io.NopCloser(&stream), &out, &errb); code != 0 {
		t.Fatalf("from stdin: %d %s", code, errb.String())
	}
	if code, o, e := run(t, "image", "compare", src, dst); code != 0 {
		t.Fatalf("compare: %d %s %s", code, o, e)
	}
	// a format whose tables come last cannot be read from a stream
	qc, _ := os.ReadFile(dst)
	errb.Reset()
	code := Execute(t.Context(), []string{"image", "convert", "-O", "raw", "-", filepath.Join(dir, "x.raw")}, bytes.NewReader(qc), &out, &errb)
	if code == 0 || !strings.Contains(errb.String(), "cannot be read from a non-seekable source") {
		t.Fatalf("qcow2 from a stream: %d %s", code, errb.String())
	}
}
