package progress

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// Bar renders a Counter as a one-line terminal progress bar. Start it only
// when the output is a terminal; Stop prints the final state and a newline.
type Bar struct {
	c     *Counter
	w     io.Writer
	every time.Duration
	stop  chan struct{}
	done  chan struct{}
	start time.Time
}

// NewBar returns a Bar that draws c on w every interval (100 ms if zero).
func NewBar(w io.Writer, c *Counter, interval time.Duration) *Bar {
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	return &Bar{c: c, w: w, every: interval, stop: make(chan struct{}), done: make(chan struct{})}
}

// Start begins drawing in a goroutine.
func (b *Bar) Start() {
	b.start = time.Now()
	go func() {
		defer close(b.done)
		t := time.NewTicker(b.every)
		defer t.Stop()
		for {
			select {
			case <-b.stop:
				b.draw()
				fmt.Fprintln(b.w)
				return
			case <-t.C:
				b.draw()
			}
		}
	}()
}

// Stop draws the last state and ends the line.
func (b *Bar) Stop() {
	close(b.stop)
	<-b.done
}

func (b *Bar) draw() {
	fmt.Fprint(b.w, "\r"+Render(b.c.Snapshot(), time.Since(b.start), 30))
}

// Render formats a snapshot as a bar of the given width with percentage,
// bytes done and rate.
func Render(s Snapshot, elapsed time.Duration, width int) string {
	frac := 0.0
	if s.Total > 0 {
		frac = float64(s.Done) / float64(s.Total)
		frac = min(max(frac, 0), 1)
	}
	fill := int(frac * float64(width))
	rate := ""
	if secs := elapsed.Seconds(); secs > 0 {
		rate = fmt.Sprintf(" %s/s", HumanBytes(int64(float64(s.Done)/secs)))
	}
	phase := ""
	if s.Phase != "" {
		phase = s.Phase + " "
	}
	return fmt.Sprintf("%s[%s%s] %5.1f%% %s/%s%s ", phase,
		strings.Repeat("=", fill), strings.Repeat(" ", width-fill),
		frac*100, HumanBytes(s.Done), HumanBytes(s.Total), rate)
}

// HumanBytes formats n with binary units (KiB, MiB, ...).
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
