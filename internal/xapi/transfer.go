package xapi

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"iter"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/disk/vhd"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/progress"
)

// Disk data moves over the HTTP handlers of the host the client speaks to,
// authenticated with the session_id query parameter:
//
//	GET /export_raw_vdi?session_id=&vdi=&format=raw|vhd[&base=]&task_id=
//	PUT /import_raw_vdi?session_id=&vdi=&format=raw|vhd&task_id=
//	GET /export?session_id=&uuid=&task_id=          (XVA)
//	PUT /import?session_id=&sr_id=&task_id=         (XVA)
//
// Each transfer runs under a task ferry creates (task.create), so that its
// outcome (and on failure xapi's reason, error_info) can be read once the
// bytes have moved; the task is destroyed afterwards. A 302 answer (the
// host cannot reach the SR) is followed to the host it names. xapi refuses
// chunked request bodies, so uploads carry a Content-Length, or, when the
// length cannot be known (ImportVM from a plain reader), the body ends
// where the client closes its side of the connection, as xapi's own
// clients do.

// Transfer formats.
const (
	FormatRaw = "raw"
	FormatVHD = "vhd"
)

// transferWait bounds how long a finished transfer waits for xapi to
// complete its task.
const transferWait = 60 * time.Second

// maxRedirects bounds the 302s followed for one transfer.
const maxRedirects = 4

// Source is what ImportRawVDI reads: a disk.Image or a disk.Stream.
type Source interface {
	Size() int64
}

func (c *Client) transferURL(path string, q url.Values) *url.URL {
	u := c.baseURL()
	u.Path = path
	q.Set("session_id", c.SessionRef().Reveal())
	u.RawQuery = q.Encode()
	return u
}

// newTask creates the task a transfer reports to.
func (c *Client) newTask(ctx context.Context, label string) (TaskRef, error) {
	t, err := c.Task().Create(ctx, label, "ferry")
	if err != nil {
		return "", err
	}
	return t, nil
}

// settleTask waits (bounded) for xapi to complete the task of a transfer
// whose bytes all moved, and returns its result or failure.
func (c *Client) settleTask(ctx context.Context, task TaskRef, what string) (string, error) {
	wctx, cancel := context.WithTimeout(ctx, transferWait)
	defer cancel()
	res, err := c.WaitTaskScaled(wctx, task, nil, 1)
	if err != nil && ctx.Err() == nil && wctx.Err() != nil {
		c.log.Warn("xapi transfer finished but its task did not complete in time; trusting the transfer", "what", what, "task", string(task))
		return "", nil
	}
	return res, err
}

// taskFailed returns the task's failure if it has failed (one look, no
// waiting), else nil.
func (c *Client) taskFailed(task TaskRef) error {
	if task == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec, err := c.Task().GetRecord(ctx, task)
	if err != nil || rec.Status != TaskStatusTypeFailure {
		return nil
	}
	return taskFailure(task, rec)
}

// brokenTransfer reports a transfer whose connection ended or broke
// before the end: Unavailable (trying again may work), with xapi's reason
// from the task when it recorded one (the server usually fails the task
// because the connection broke, not the other way round).
func (c *Client) brokenTransfer(what, cause string, n int64, task TaskRef) error {
	if tf := c.taskFailed(task); tf != nil {
		return fmt.Errorf("%s: %s after %d bytes: %w (xapi: %w)", what, cause, n, errs.ErrUnavailable, tf)
	}
	return fmt.Errorf("%s: %s after %d bytes: %w", what, cause, n, errs.ErrUnavailable)
}

// withTaskReason adds xapi's reason, from the task, to a failed transfer:
// a broken connection stays Unavailable with the reason appended; other
// failures report the task's error.
func (c *Client) withTaskReason(what string, err error, task TaskRef) error {
	tf := c.taskFailed(task)
	switch {
	case tf == nil:
		return err
	case errs.Is(err, errs.Unavailable):
		return fmt.Errorf("%w (xapi: %w)", err, tf)
	}
	return fmt.Errorf("%s: %w", what, tf)
}

// handlerError describes a non-200 answer of a transfer handler, with
// xapi's reason from the task when it recorded one.
func (c *Client) handlerError(what string, resp *http.Response, task TaskRef) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if tf := c.taskFailed(task); tf != nil {
		return fmt.Errorf("%s: HTTP %d: %w", what, resp.StatusCode, tf)
	}
	return httpStatusError(what, resp.StatusCode, body)
}

// isRedirect reports a redirect status with somewhere to go.
func redirectTarget(resp *http.Response, from *url.URL) (*url.URL, bool) {
	switch resp.StatusCode {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
	default:
		return nil, false
	}
	loc := resp.Header.Get("Location")
	if loc == "" {
		return nil, false
	}
	u, err := from.Parse(loc)
	if err != nil {
		return nil, false
	}
	if u.Query().Get("session_id") == "" {
		// keep authenticating on the host redirected to
		q := u.Query()
		q.Set("session_id", from.Query().Get("session_id"))
		u.RawQuery = q.Encode()
	}
	return u, true
}

// get sends a GET, following redirects.
func (c *Client) get(ctx context.Context, what string, u *url.URL) (*http.Response, error) {
	for range maxRedirects + 1 {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, innerError(err))
		}
		req.Header.Set("User-Agent", "ferry")
		// The connection is not closed as soon as the last byte is read
		// (as req.Close would): a server may still be completing the
		// transfer's task, and must not see the client leave first.
		resp, err := c.http.Do(req)
		if err != nil {
			return nil, transportError(ctx, what+" from "+u.Host, err)
		}
		if next, ok := redirectTarget(resp, u); ok {
			resp.Body.Close()
			c.log.Debug("xapi transfer redirected", "what", what, "from", u.Host, "to", next.Host)
			u = next
			continue
		}
		return resp, nil
	}
	return nil, fmt.Errorf("%s: more than %d redirects: %w", what, maxRedirects, errs.ErrUnavailable)
}

// body is one attempt's request body: a reader, and whether it was read
// from (a body that was not can be sent again to a redirect).
type body interface {
	io.ReadCloser
	Touched() bool
}

// put sends a PUT of length bytes, following redirects: newBody gives the
// body for each attempt (it may return the previous one when untouched).
func (c *Client) put(ctx context.Context, what string, u *url.URL, length int64, expect bool, newBody func() (body, error)) (*http.Response, body, error) {
	for range maxRedirects + 1 {
		b, err := newBody()
		if err != nil {
			return nil, nil, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, u.String(), b)
		if err != nil {
			b.Close()
			return nil, nil, fmt.Errorf("%s: %w", what, innerError(err))
		}
		req.ContentLength = length
		if length == 0 {
			req.Body = http.NoBody
		}
		req.Header.Set("User-Agent", "ferry")
		req.Header.Set("Content-Type", "application/octet-stream")
		if expect {
			req.Header.Set("Expect", "100-continue")
		}
		req.Close = true
		resp, err := c.http.Do(req)
		if err != nil {
			b.Close()
			return nil, nil, transportError(ctx, what+" to "+u.Host, err)
		}
		if next, ok := redirectTarget(resp, u); ok {
			resp.Body.Close()
			c.log.Debug("xapi transfer redirected", "what", what, "from", u.Host, "to", next.Host)
			u = next
			continue
		}
		return resp, b, nil
	}
	return nil, nil, fmt.Errorf("%s: more than %d redirects: %w", what, maxRedirects, errs.ErrUnavailable)
}

// ExportRawVDI streams one VDI from GET /export_raw_vdi. format is
// FormatVHD (the dynamic VHD xapi writes holds only allocated blocks; with
// base, a differencing VHD of the blocks that changed since base, whose
// runs are those blocks) or FormatRaw (every byte; with base, unchanged
// blocks read as zeros). The VHD is parsed as it arrives by the disk
// engine's VHD stream reader; nothing is staged on disk.
//
// The returned Stream's Next reports a connection lost before the end as
// an error wrapping errs.ErrUnavailable (and xapi's reason when its task
// recorded one). At the end of the stream xapi's task must have
// succeeded. Close releases the connection (and cancels the export when
// it has not finished).
func (c *Client) ExportRawVDI(ctx context.Context, vdi VDIRef, format string, base VDIRef) (disk.Stream, error) {
	what := fmt.Sprintf("xapi export_raw_vdi of VDI %s", vdi)
	if format != FormatRaw && format != FormatVHD {
		return nil, fmt.Errorf("%s: format %q: want raw or vhd: %w", what, format, errs.ErrInvalidArgument)
	}
	if err := checkRef("VDI", string(vdi)); err != nil {
		return nil, err
	}
	size, err := c.VDI().GetVirtualSize(ctx, vdi)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	q := url.Values{"vdi": {string(vdi)}, "format": {format}}
	if !isNullRef(string(base)) {
		bsize, err := c.VDI().GetVirtualSize(ctx, base)
		if err != nil {
			return nil, fmt.Errorf("%s: base %s: %w", what, base, err)
		}
		if bsize != size {
			return nil, fmt.Errorf("%s: base %s is %d bytes but the VDI is %d: %w", what, base, bsize, size, errs.ErrInvalidArgument)
		}
		q.Set("base", string(base))
	}
	task, err := c.newTask(ctx, "ferry export_raw_vdi")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	q.Set("task_id", string(task))
	ok := false
	defer func() {
		if !ok {
			c.destroyTask(task)
		}
	}()
	resp, err := c.get(ctx, what, c.transferURL("/export_raw_vdi", q))
	if err != nil {
		if ctx.Err() == nil {
			err = c.withTaskReason(what, err, task)
		}
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, c.handlerError(what, resp, task)
	}
	tb := &trackedBody{r: resp.Body}
	es := &exportStream{c: c, body: tb, resp: resp, task: task, what: what, size: size}
	var s disk.Stream
	if format == FormatVHD {
		s, err = vhd.Format().OpenStream(ctx, &diffAsDynamic{r: tb}, &disk.OpenOptions{Logger: c.log})
		if err == nil && s.Size() != size {
			s.Close()
			err = fmt.Errorf("VHD stream of %d bytes for a VDI of %d bytes: %w", s.Size(), size, errs.ErrCorrupt)
		}
	} else {
		s, err = disk.RawStream(tb, size, string(vdi))
		if err == nil && resp.ContentLength >= 0 && resp.ContentLength != size {
			err = fmt.Errorf("the server sends %d bytes for a VDI of %d: %w", resp.ContentLength, size, errs.ErrCorrupt)
		}
	}
	if err != nil {
		err = es.classify(ctx, err)
		resp.Body.Close()
		c.cancelTask(task)
		return nil, err
	}
	es.s = s
	ok = true
	if a, isMapped := s.(allocator); isMapped && isNullRef(string(base)) {
		// A whole-disk VHD export: its BAT says which blocks hold data
		// (a delta's does not: its unset sectors are the parent's).
		return &mappedExportStream{exportStream: es, alloc: a}, nil
	}
	return es, nil
}

// allocator is a stream that knows its allocated ranges when it opens
// (vhd's stream: from its BAT); unset sectors in them read as zeros.
type allocator interface{ Allocated() []disk.Extent }

// mappedExportStream is an export whose allocated ranges are known up
// front.
type mappedExportStream struct {
	*exportStream
	alloc allocator
}

// Allocated lists the ranges the export's blocks cover: a superset of its
// runs; the rest of them reads as zeros.
func (m *mappedExportStream) Allocated() []disk.Extent { return m.alloc.Allocated() }

// trackedBody counts bytes and remembers how the body ended.
type trackedBody struct {
	r   io.Reader
	n   int64
	eof bool
	err error
}

func (t *trackedBody) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	t.n += int64(n)
	switch {
	case errors.Is(err, io.EOF):
		t.eof = true
	case err != nil:
		t.err = err
	}
	return n, err
}

// exportStream is the Stream of ExportRawVDI.
type exportStream struct {
	c    *Client
	s    disk.Stream
	body *trackedBody
	resp *http.Response
	task TaskRef
	what string
	size int64

	done, closed bool
}

func (e *exportStream) Size() int64     { return e.s.Size() }
func (e *exportStream) Info() disk.Info { return e.s.Info() }

func (e *exportStream) Next(ctx context.Context) (int64, []byte, error) {
	if e.closed {
		return 0, nil, fmt.Errorf("%s: stream is closed: %w", e.what, errs.ErrFailedPrecondition)
	}
	if e.done {
		return 0, nil, io.EOF
	}
	off, p, err := e.s.Next(ctx)
	if err == nil {
		return off, p, nil
	}
	if !errors.Is(err, io.EOF) {
		return 0, nil, e.classify(ctx, err)
	}
	// A raw stream stops at the VDI's size: anything after it is wrong.
	// With a Content-Length the transport enforces that (and reading on
	// would close the connection before xapi completes its task).
	if !e.body.eof && e.body.err == nil && e.resp.ContentLength < 0 {
		var one [1]byte
		if n, _ := io.ReadFull(e.body, one[:]); n > 0 {
			return 0, nil, fmt.Errorf("%s: the server sent more than the VDI's %d bytes: %w", e.what, e.size, errs.ErrCorrupt)
		}
		if e.body.err != nil {
			return 0, nil, e.classify(ctx, e.body.err)
		}
	}
	if _, err := e.c.settleTask(ctx, e.task, e.what); err != nil {
		return 0, nil, fmt.Errorf("%s: %w", e.what, err)
	}
	e.done = true
	return 0, nil, io.EOF
}

// classify turns a stream failure into the error to report: the context's
// error, xapi's reason from the task, Unavailable for a connection that
// ended or broke before the end of the image, or the parser's own error.
func (e *exportStream) classify(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", e.what, ctx.Err())
	}
	if e.body.eof || e.body.err != nil {
		cause := "the connection ended"
		if e.body.err != nil {
			cause = "the connection broke (" + innerError(e.body.err).Error() + ")"
		}
		return e.c.brokenTransfer(e.what, cause+", before the end of the image,", e.body.n, e.task)
	}
	return fmt.Errorf("%s: %w", e.what, err)
}

func (e *exportStream) Close() error {
	if e.closed {
		return nil
	}
	e.closed = true
	e.s.Close()
	e.resp.Body.Close()
	if !e.done {
		e.c.cancelTask(e.task)
	}
	e.c.destroyTask(e.task)
	return nil
}

// diffAsDynamic presents a differencing VHD stream (what export_raw_vdi
// sends with a base) to the VHD stream reader as a dynamic one, by
// rewriting the disk type in the footer copy at the front and in the
// footer at the end. In the differencing VHD xapi writes, the blocks present are
// the blocks that changed, with every bitmap bit set; read as a dynamic
// VHD they are exactly the stream's runs, and what the runs leave out is
// what did not change. Other streams pass through untouched.
type diffAsDynamic struct {
	r                io.Reader
	buf              []byte // read but not yet released; the last 512 bytes are held back
	start            int
	headDone, isDiff bool
	eof              bool
	err              error
}

const (
	vhdFooterLen  = 512
	vhdTypeDyn    = 3
	vhdTypeDiff   = 4
	vhdFooterMark = "conectix"
)

func (d *diffAsDynamic) Read(p []byte) (int, error) {
	for !d.eof && len(d.buf)-d.start <= vhdFooterLen {
		if d.start > 0 && cap(d.buf)-len(d.buf) < 64<<10 {
			n := copy(d.buf, d.buf[d.start:])
			d.buf, d.start = d.buf[:n], 0
		}
		if cap(d.buf)-len(d.buf) < 64<<10 {
			nb := make([]byte, len(d.buf), 2*cap(d.buf)+128<<10)
			copy(nb, d.buf)
			d.buf = nb
		}
		n, err := d.r.Read(d.buf[len(d.buf):cap(d.buf)])
		d.buf = d.buf[:len(d.buf)+n]
		if err != nil {
			d.eof = true
			if !errors.Is(err, io.EOF) {
				d.err = err
			}
		}
	}
	pending := d.buf[d.start:]
	if !d.headDone && (len(pending) >= vhdFooterLen || d.eof) {
		d.headDone = true
		if len(pending) >= vhdFooterLen && d.start == 0 {
			d.isDiff = patchFooter(pending[:vhdFooterLen])
		}
	}
	avail := len(pending)
	if !d.eof {
		avail -= vhdFooterLen
	} else if d.isDiff && avail >= vhdFooterLen && d.err == nil {
		patchFooter(pending[avail-vhdFooterLen:])
		d.isDiff = false // patched once
	}
	if avail <= 0 {
		if d.eof {
			if d.err != nil {
				return 0, d.err
			}
			return 0, io.EOF
		}
		return 0, nil
	}
	n := copy(p, pending[:avail])
	d.start += n
	return n, nil
}

// patchFooter turns a differencing footer into a dynamic one (fixing its
// checksum) and reports whether it did.
func patchFooter(b []byte) bool {
	if len(b) < vhdFooterLen || string(b[:8]) != vhdFooterMark {
		return false
	}
	if t := uint32(b[60])<<24 | uint32(b[61])<<16 | uint32(b[62])<<8 | uint32(b[63]); t != vhdTypeDiff {
		return false
	}
	b[60], b[61], b[62], b[63] = 0, 0, 0, vhdTypeDyn
	var sum uint32
	for i, c := range b[:vhdFooterLen] {
		if i >= 64 && i < 68 {
			continue
		}
		sum += uint32(c)
	}
	sum = ^sum
	b[64], b[65], b[66], b[67] = byte(sum>>24), byte(sum>>16), byte(sum>>8), byte(sum)
	return true
}

// ImportRawVDI writes src into the existing VDI vdi (of at least src's
// size) with PUT /import_raw_vdi. format FormatVHD sends a dynamic VHD
// holding only src's allocated blocks, written by the disk engine as it is
// sent (src must then be a disk.Image, whose extents plan the VHD);
// FormatRaw sends every byte (zeros for holes, without reading them). Progress
// counts src's virtual bytes. Cancelling ctx stops the upload and cancels
// xapi's task.
func (c *Client) ImportRawVDI(ctx context.Context, vdi VDIRef, format string, src Source, rep progress.Reporter) error {
	what := fmt.Sprintf("xapi import_raw_vdi into VDI %s", vdi)
	rep = progress.Or(rep)
	if err := checkRef("VDI", string(vdi)); err != nil {
		return err
	}
	img, isImg := src.(disk.Image)
	st, isStream := src.(disk.Stream)
	switch {
	case format != FormatRaw && format != FormatVHD:
		return fmt.Errorf("%s: format %q: want raw or vhd: %w", what, format, errs.ErrInvalidArgument)
	case !isImg && !isStream:
		return fmt.Errorf("%s: source %T is neither a disk.Image nor a disk.Stream: %w", what, src, errs.ErrInvalidArgument)
	case format == FormatVHD && !isImg:
		return fmt.Errorf("%s: a VHD upload is planned from the source's extents, so it needs a disk.Image, not a stream (send a stream as raw): %w", what, errs.ErrInvalidArgument)
	}
	size := src.Size()
	vsize, err := c.VDI().GetVirtualSize(ctx, vdi)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if size > vsize {
		return fmt.Errorf("%s: the source is %d bytes but the VDI only %d: %w", what, size, vsize, errs.ErrInvalidArgument)
	}

	// The body and its length.
	var length int64
	var newBody func() (body, error)
	switch {
	case format == FormatVHD:
		length, err = vhdLength(ctx, img)
		if err != nil {
			return fmt.Errorf("%s: plan the VHD: %w", what, err)
		}
		newBody = func() (body, error) { return vhdBody(ctx, img, rep), nil }
	case isImg:
		length = size
		newBody = func() (body, error) {
			ir := &imageReader{ctx: ctx, img: img}
			return &countingBody{r: ir, rep: rep, closer: ir.Close}, nil
		}
	default:
		length = size
		var cur body
		newBody = func() (body, error) {
			if cur != nil && cur.Touched() {
				return nil, fmt.Errorf("%s: redirected to another host after the stream started; a stream cannot be sent twice: %w", what, errs.ErrFailedPrecondition)
			}
			if cur == nil {
				cur = &countingBody{r: &streamReader{ctx: ctx, s: st}, rep: rep}
			}
			return cur, nil
		}
	}
	rep.SetTotal(size)

	task, err := c.newTask(ctx, "ferry import_raw_vdi")
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer c.destroyTask(task)
	q := url.Values{"vdi": {string(vdi)}, "format": {format}, "task_id": {string(task)}}
	// Always ask for 100-continue: a host that redirects (or refuses)
	// answers before any of the body is sent, instead of resetting the
	// connection under a body it never reads.
	resp, b, err := c.put(ctx, what, c.transferURL("/import_raw_vdi", q), length, true, newBody)
	if err != nil {
		if ctx.Err() != nil {
			c.cancelTask(task)
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
		return c.withTaskReason(what, err, task)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Close()
		return c.handlerError(what, resp, task)
	}
	// xapi answers before it reads the body and closes the connection
	// when the import is done; a server that reads first answers after.
	_, rerr := io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	berr := b.Close()
	if ctx.Err() != nil {
		c.cancelTask(task)
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
	if berr != nil {
		return c.withTaskReason(what, fmt.Errorf("%s: %w", what, berr), task)
	}
	if rerr != nil {
		return c.withTaskReason(what, transportError(ctx, what+": read the answer", rerr), task)
	}
	if _, err := c.settleTask(ctx, task, what); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// countingBody counts the bytes read and reports them as progress.
type countingBody struct {
	r       io.Reader
	rep     progress.Reporter
	n       atomic.Int64 // read by the transport, looked at by ferry
	closer  func() error
	closeMu sync.Once
	cerr    error
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.n.Add(int64(n))
	if b.rep != nil && n > 0 {
		b.rep.Add(int64(n))
	}
	return n, err
}

func (b *countingBody) Touched() bool { return b.n.Load() > 0 }

// Close returns the producer's error, if any. The transport may call it
// early; the error is kept for the caller's own Close.
func (b *countingBody) Close() error {
	b.closeMu.Do(func() {
		if b.closer != nil {
			b.cerr = b.closer()
		}
	})
	return b.cerr
}

// vhdCreate starts a streamed dynamic VHD of img on t.
func vhdCreate(ctx context.Context, t io.Writer, img disk.Image) (disk.Writer, error) {
	return vhd.Format().Create(ctx, disk.PlainTarget(t), img.Size(), &disk.CreateOptions{Source: img})
}

// countWriter counts bytes written.
type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

// vhdLength returns the length of the dynamic VHD vhdBody will send: the
// writer plans its blocks from img's extents alone, so finishing a writer
// that was given no data (planned blocks come out as zeros) produces a VHD
// of exactly that length without reading img.
func vhdLength(ctx context.Context, img disk.Image) (int64, error) {
	var cw countWriter
	w, err := vhdCreate(ctx, &cw, img)
	if err != nil {
		return 0, err
	}
	defer w.Close()
	if err := w.Commit(ctx); err != nil {
		return 0, err
	}
	return cw.n, nil
}

// vhdBody returns a body producing img as a dynamic VHD: the disk engine
// writes it into a pipe as the transport reads. Progress counts img's
// virtual bytes as converted.
func vhdBody(ctx context.Context, img disk.Image, rep progress.Reporter) body {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := func() error {
			w, err := vhdCreate(ctx, pw, img)
			if err != nil {
				return err
			}
			defer w.Close()
			if _, err := disk.Convert(ctx, w, img, &disk.ConvertOptions{Progress: progress.KeepTotal(rep)}); err != nil {
				return err
			}
			return w.Commit(ctx)
		}()
		pw.CloseWithError(err)
		done <- err
	}()
	cb := &countingBody{r: pr}
	cb.closer = func() error {
		pr.CloseWithError(errBodyClosed)
		err := <-done
		if errors.Is(err, errBodyClosed) || errors.Is(err, io.ErrClosedPipe) {
			// the transport stopped reading: its own error says why
			return nil
		}
		return err
	}
	return cb
}

var errBodyClosed = errors.New("request body closed")

// imageReader reads an Image front to back, producing zeros for ranges its
// extents say read as zeros without reading them.
type imageReader struct {
	mu   sync.Mutex // the transport may Close while a Read runs
	ctx  context.Context
	img  disk.Image
	pos  int64
	ext  disk.Extent // current extent, containing pos
	next func() (disk.Extent, error, bool)
	stop func()
}

// Close stops the extent iterator.
func (r *imageReader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closeLocked()
	return nil
}

func (r *imageReader) closeLocked() {
	r.next = func() (disk.Extent, error, bool) { return disk.Extent{}, errBodyClosed, false }
	if r.stop != nil {
		r.stop()
		r.stop = nil
	}
}

func (r *imageReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	size := r.img.Size()
	if r.pos >= size {
		r.closeLocked()
		return 0, io.EOF
	}
	if r.next == nil {
		r.next, r.stop = iter.Pull2(r.img.Extents(r.ctx, 0, size))
	}
	for r.pos >= r.ext.End() {
		e, err, ok := r.next()
		if err != nil {
			return 0, err
		}
		if !ok || e.Len <= 0 || e.End() <= r.pos {
			if !ok {
				// extents ended early: the rest reads from the image
				r.ext = disk.Extent{Off: r.pos, Len: size - r.pos, Kind: disk.Data}
				break
			}
			continue
		}
		r.ext = e
	}
	n := int(min(int64(len(p)), r.ext.End()-r.pos, 4<<20))
	if r.ext.Kind.ReadsZero() {
		clear(p[:n])
	} else if err := readFull(r.img, p[:n], r.pos); err != nil {
		return 0, err
	}
	r.pos += int64(n)
	return n, nil
}

func readFull(img disk.Image, p []byte, off int64) error {
	n, err := img.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read source at %d: %w", off, err)
}

// streamReader reads a Stream front to back, zeros between runs.
type streamReader struct {
	ctx  context.Context
	s    disk.Stream
	pos  int64
	off  int64
	run  []byte
	done bool
}

func (r *streamReader) Read(p []byte) (int, error) {
	size := r.s.Size()
	if r.pos >= size {
		return 0, io.EOF
	}
	if len(r.run) == 0 && !r.done && r.off+int64(len(r.run)) <= r.pos {
		off, run, err := r.s.Next(r.ctx)
		switch {
		case errors.Is(err, io.EOF):
			r.done = true
			r.off, r.run = size, nil
		case err != nil:
			return 0, err
		case off < r.pos:
			return 0, fmt.Errorf("stream run at %d before position %d: %w", off, r.pos, errs.ErrCorrupt)
		default:
			r.off, r.run = off, run
		}
	}
	if r.pos < r.off || r.done {
		end := size
		if !r.done {
			end = r.off
		}
		n := int(min(int64(len(p)), end-r.pos))
		clear(p[:n])
		r.pos += int64(n)
		return n, nil
	}
	n := copy(p, r.run)
	r.run = r.run[n:]
	r.pos += int64(n)
	r.off = r.pos
	return n, nil
}

// ExportVM writes the whole VM vm as an XVA archive to w, from
// GET /export?uuid=. A connection lost before xapi finished is an error
// wrapping errs.ErrUnavailable. It returns the bytes written.
func (c *Client) ExportVM(ctx context.Context, vm VMRef, w io.Writer) (int64, error) {
	what := fmt.Sprintf("xapi export of VM %s", vm)
	if err := checkRef("VM", string(vm)); err != nil {
		return 0, err
	}
	uuid, err := c.VM().GetUUID(ctx, vm)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	task, err := c.newTask(ctx, "ferry export")
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	defer c.destroyTask(task)
	resp, err := c.get(ctx, what, c.transferURL("/export", url.Values{"uuid": {uuid}, "task_id": {string(task)}}))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, c.handlerError(what, resp, task)
	}
	tb := &trackedBody{r: resp.Body}
	n, err := io.Copy(w, tb)
	if err != nil {
		if ctx.Err() != nil {
			c.cancelTask(task)
			return n, fmt.Errorf("%s: %w", what, ctx.Err())
		}
		if tb.err == nil { // the writer failed
			c.cancelTask(task)
			return n, fmt.Errorf("%s: write: %w", what, err)
		}
		return n, c.brokenTransfer(what, "the connection broke ("+innerError(err).Error()+")", n, task)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return n, c.brokenTransfer(what, fmt.Sprintf("the connection ended before the %d bytes announced", resp.ContentLength), n, task)
	}
	if _, err := c.settleTask(ctx, task, what); err != nil {
		return n, fmt.Errorf("%s: %w", what, err)
	}
	return n, nil
}

// sizeOf finds a reader's length when it can tell: Len, Size, or a
// regular file's size from the current position.
func sizeOf(r io.Reader) int64 {
	switch x := r.(type) {
	case interface{ Len() int }:
		return int64(x.Len())
	case interface{ Size() int64 }:
		if s, ok := r.(io.Seeker); ok {
			if pos, err := s.Seek(0, io.SeekCurrent); err == nil {
				return x.Size() - pos
			}
		}
		return x.Size()
	case *os.File:
		st, err := x.Stat()
		if err != nil || !st.Mode().IsRegular() {
			return -1
		}
		pos, err := x.Seek(0, io.SeekCurrent)
		if err != nil {
			return -1
		}
		return st.Size() - pos
	}
	return -1
}

// ImportVM imports the XVA archive read from r into SR sr with
// PUT /import?sr_id=, and returns the new VM (the one that is not a
// snapshot). When r's length is known (Len, Size, a regular file) it is
// sent as the Content-Length; otherwise the body ends where ferry closes
// its side of the connection, as xapi expects (it refuses chunked bodies).
func (c *Client) ImportVM(ctx context.Context, sr SRRef, r io.Reader, rep progress.Reporter) (VMRef, error) {
	what := fmt.Sprintf("xapi import into SR %s", sr)
	if err := checkRef("SR", string(sr)); err != nil {
		return "", err
	}
	rep = progress.Or(rep)
	task, err := c.newTask(ctx, "ferry import")
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	defer c.destroyTask(task)
	u := c.transferURL("/import", url.Values{"sr_id": {string(sr)}, "task_id": {string(task)}})
	cb := &countingBody{r: r, rep: rep}
	length := sizeOf(r)
	var resp *http.Response
	if length >= 0 {
		rep.SetTotal(length)
		resp, _, err = c.put(ctx, what, u, length, true, func() (body, error) {
			if cb.Touched() {
				return nil, fmt.Errorf("%s: redirected after the upload started: %w", what, errs.ErrFailedPrecondition)
			}
			return cb, nil
		})
	} else {
		resp, err = c.putUntilClose(ctx, what, u, cb)
	}
	if err != nil {
		if ctx.Err() != nil {
			c.cancelTask(task)
			return "", fmt.Errorf("%s: %w", what, ctx.Err())
		}
		return "", c.withTaskReason(what, err, task)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", c.handlerError(what, resp, task)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	res, err := c.settleTask(ctx, task, what)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	refs := ResultRefs(res)
	for _, ref := range refs {
		snap, err := c.VM().GetRecord(ctx, VMRef(ref))
		if err == nil && !snap.IsASnapshot && !snap.IsATemplate {
			return VMRef(ref), nil
		}
	}
	if len(refs) > 0 {
		return VMRef(refs[0]), nil
	}
	return "", fmt.Errorf("%s: the import task named no VM: %w", what, errs.ErrCorrupt)
}

// putUntilClose sends a PUT whose body has no stated length: the request
// carries neither Content-Length nor chunked encoding and ends where the
// client half-closes the connection, which is how xapi reads a body of
// unknown length. The server may answer (redirect, refuse) before the
// body: "Expect: 100-continue" gives it a second to do so before the
// body is sent.
func (c *Client) putUntilClose(ctx context.Context, what string, u *url.URL, b body) (*http.Response, error) {
	for range maxRedirects + 1 {
		resp, next, err := c.putUntilCloseOnce(ctx, what, u, b)
		if err != nil || next == nil {
			return resp, err
		}
		if b.Touched() {
			return nil, fmt.Errorf("%s: redirected after the upload started: %w", what, errs.ErrFailedPrecondition)
		}
		u = next
	}
	return nil, fmt.Errorf("%s: more than %d redirects: %w", what, maxRedirects, errs.ErrUnavailable)
}

func (c *Client) putUntilCloseOnce(ctx context.Context, what string, u *url.URL, b body) (*http.Response, *url.URL, error) {
	host := u.Host
	if u.Port() == "" {
		if u.Scheme == "https" {
			host = net.JoinHostPort(u.Hostname(), "443")
		} else {
			host = net.JoinHostPort(u.Hostname(), "80")
		}
	}
	raw, err := c.dialer.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, nil, transportError(ctx, what+": connect to "+u.Host, err)
	}
	var conn net.Conn = raw
	if u.Scheme == "https" {
		cfg := c.tlsCfg.Clone()
		if cfg == nil {
			cfg = &tls.Config{}
		}
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		tc := tls.Client(raw, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, nil, transportError(ctx, what+": TLS handshake with "+u.Host, err)
		}
		conn = tc
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	fail := func(err error) (*http.Response, *url.URL, error) {
		conn.Close()
		return nil, nil, transportError(ctx, what+" to "+u.Host, err)
	}
	req := fmt.Sprintf("PUT %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: ferry\r\nContent-Type: application/octet-stream\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n", u.RequestURI(), u.Host)
	if _, err := io.WriteString(conn, req); err != nil {
		return fail(err)
	}
	br := bufio.NewReader(conn)
	hreq := &http.Request{Method: http.MethodPut, URL: u}
	// Give the server a second to answer before the body.
	conn.SetReadDeadline(time.Now().Add(time.Second))
	_, perr := br.Peek(1)
	conn.SetReadDeadline(time.Time{})
	if perr == nil {
		resp, err := http.ReadResponse(br, hreq)
		if err != nil {
			return fail(err)
		}
		if resp.StatusCode != http.StatusContinue {
			if next, ok := redirectTarget(resp, u); ok {
				resp.Body.Close()
				conn.Close()
				return nil, next, nil
			}
			return withConn(resp, conn), nil, nil
		}
	} else if ne, ok := perr.(net.Error); !ok || !ne.Timeout() {
		return fail(perr)
	}
	_, werr := io.Copy(conn, b)
	if werr != nil && b.Touched() && ctx.Err() == nil {
		// The server may have answered and closed: read its answer.
		if resp, err := http.ReadResponse(br, hreq); err == nil && resp.StatusCode != http.StatusOK {
			return withConn(resp, conn), nil, nil
		}
		return fail(werr)
	}
	if werr != nil {
		return fail(werr)
	}
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil {
			return fail(err)
		}
	}
	resp, err := http.ReadResponse(br, hreq)
	if err != nil {
		return fail(err)
	}
	return withConn(resp, conn), nil, nil
}

// withConn makes closing resp's body close the connection.
func withConn(resp *http.Response, conn net.Conn) *http.Response {
	resp.Body = &connBody{ReadCloser: resp.Body, conn: conn}
	return resp
}

type connBody struct {
	io.ReadCloser
	conn net.Conn
}

func (b *connBody) Close() error {
	err := b.ReadCloser.Close()
	b.conn.Close()
	return err
}
