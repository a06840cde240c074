package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/disktest"
)

// TestProgressBar runs `ferry image convert -p` on a real terminal (a pty
// made by script(1)) and through a pipe: the bar appears only on the
// terminal.
func TestProgressBar(t *testing.T) {
	scriptCmd, err := exec.LookPath("script")
	if err != nil {
		t.Skip("script(1) not installed (util-linux)")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	src := writeRaw(t, dir, "a.raw", &disktest.Pattern{Name: "a", Size: 64 << 20, Seed: 1, Data: []disk.Extent{{Off: 0, Len: 48 << 20}}})
	tests := []struct {
		name    string
		tty     bool
		wantBar bool
	}{
		{"terminal", true, true},
		{"pipe", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := filepath.Join(dir, tt.name+".raw")
			args := []string{"image", "convert", "-p", "-O", "raw", src, dst}
			var c *exec.Cmd
			if tt.tty {
				c = exec.CommandContext(t.Context(), scriptCmd, "-qfec", self+" "+strings.Join(args, " "), "/dev/null")
			} else {
				c = exec.CommandContext(t.Context(), self, args...)
			}
			c.Env = append(os.Environ(), "FERRY_TEST_MAIN=1")
			out, err := c.CombinedOutput()
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			hasBar := strings.Contains(string(out), "100.0%") && strings.Contains(string(out), "[===")
			if hasBar != tt.wantBar {
				t.Fatalf("bar shown = %v, want %v; output:\n%q", hasBar, tt.wantBar, out)
			}
			if !strings.Contains(string(out), "read 48.0 MiB of data") {
				t.Fatalf("summary missing:\n%s", out)
			}
		})
	}
}
