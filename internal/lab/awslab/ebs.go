package awslab

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// The EBS direct APIs: REST with JSON bodies, errors as JSON with the
// error type in x-amzn-ErrorType.

// ebsError is an EBS direct API error.
type ebsError struct {
	Type    string // ValidationException, ResourceNotFoundException, ...
	Message string
	Reason  string
	Status  int
}

func (e *ebsError) Error() string { return e.Type + ": " + e.Message }

func ebsErr(status int, typ, reason, format string, a ...any) *ebsError {
	return &ebsError{Type: typ, Reason: reason, Message: fmt.Sprintf(format, a...), Status: status}
}

func validationErr(reason, format string, a ...any) *ebsError {
	return ebsErr(http.StatusBadRequest, "ValidationException", reason, format, a...)
}

func snapshotNotFound(id string) *ebsError {
	return ebsErr(http.StatusNotFound, "ResourceNotFoundException", "SNAPSHOT_NOT_FOUND", "The snapshot '%s' does not exist.", id)
}

func (s *Server) ebsFail(w http.ResponseWriter, reqID string, err error) {
	var e *ebsError
	if !errors.As(err, &e) {
		var ae *authError
		if errors.As(err, &ae) {
			e = ebsAuthError(ae)
		} else {
			e = ebsErr(http.StatusInternalServerError, "InternalServerException", "", "An internal error occurred: %v", err)
			s.log.Error("ebs request", "err", err)
		}
	}
	body := map[string]string{"Message": e.Message}
	if e.Reason != "" {
		body["Reason"] = e.Reason
	}
	raw, _ := json.Marshal(body)
	h := w.Header()
	h.Set("x-amzn-RequestId", reqID)
	h.Set("x-amzn-ErrorType", e.Type)
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(raw)))
	w.WriteHeader(e.Status)
	w.Write(raw)
}

// ebsAuthError reports an authentication failure as AWS's JSON services
// do.
func ebsAuthError(ae *authError) *ebsError {
	switch ae.kind {
	case authMissing:
		return ebsErr(http.StatusForbidden, "MissingAuthenticationTokenException", "", "Missing Authentication Token")
	case authUnknownKey:
		return ebsErr(http.StatusForbidden, "UnrecognizedClientException", "", "The security token included in the request is invalid.")
	case authBadSignature, authBodyMismatch:
		return ebsErr(http.StatusForbidden, "InvalidSignatureException", "", "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.")
	case authExpired:
		return ebsErr(http.StatusForbidden, "InvalidSignatureException", "", "Signature expired: %s", ae.msg)
	case authWrongRegion:
		return ebsErr(http.StatusForbidden, "InvalidSignatureException", "", "Credential should be scoped to a valid region: %s", ae.msg)
	}
	return ebsErr(http.StatusBadRequest, "IncompleteSignatureException", "", "%s", ae.msg)
}

func ebsWrite(w http.ResponseWriter, reqID string, status int, v any) {
	raw, _ := json.Marshal(v)
	h := w.Header()
	h.Set("x-amzn-RequestId", reqID)
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(raw)))
	w.WriteHeader(status)
	w.Write(raw)
}

// epoch is a JSON timestamp as the EBS APIs send it: seconds since 1970.
func epoch(t time.Time) float64 { return float64(t.UnixMilli()) / 1000 }

// serveEBS routes an authenticated EBS direct API request.
func (s *Server) serveEBS(w http.ResponseWriter, r *http.Request, reqID string) {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	var err error
	switch {
	case r.Method == http.MethodPost && len(parts) == 1 && parts[0] == "snapshots":
		err = s.startSnapshot(w, r, reqID)
	case r.Method == http.MethodPost && len(parts) == 3 && parts[0] == "snapshots" && parts[1] == "completion":
		err = s.completeSnapshot(w, r, reqID, parts[2])
	case r.Method == http.MethodPut && len(parts) == 4 && parts[0] == "snapshots" && parts[2] == "blocks":
		err = s.putSnapshotBlock(w, r, reqID, parts[1], parts[3])
	case r.Method == http.MethodGet && len(parts) == 4 && parts[0] == "snapshots" && parts[2] == "blocks":
		err = s.getSnapshotBlock(w, r, reqID, parts[1], parts[3])
	case r.Method == http.MethodGet && len(parts) == 3 && parts[0] == "snapshots" && parts[2] == "blocks":
		err = s.listSnapshotBlocks(w, r, reqID, parts[1])
	case r.Method == http.MethodGet && len(parts) == 3 && parts[0] == "snapshots" && parts[2] == "changedblocks":
		err = s.listChangedBlocks(w, r, reqID, parts[1])
	default:
		err = ebsErr(http.StatusNotFound, "UnknownOperationException", "", "No EBS direct API operation is served at %s %s.", r.Method, r.URL.Path)
	}
	if err != nil {
		s.log.Info("ebs request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		s.ebsFail(w, reqID, err)
	}
}

type ebsTag struct {
	Key   string `json:"Key"`
	Value string `json:"Value"`
}

func (s *Server) ebsTagsLocked(id string) []ebsTag {
	var out []ebsTag
	for _, k := range sortedKeys(s.st.Tags[id]) {
		out = append(out, ebsTag{k, s.st.Tags[id][k]})
	}
	return out
}

func checkSnapshotID(id string) error {
	if !strings.HasPrefix(id, "snap-") || len(id) > 64 || strings.Trim(id[5:], "0123456789abcdef") != "" || len(id) == 5 {
		return validationErr("INVALID_SNAPSHOT_ID", "The snapshot ID '%s' is malformed.", id)
	}
	return nil
}

func (s *Server) startSnapshot(w http.ResponseWriter, r *http.Request, reqID string) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return err
	}
	var req struct {
		VolumeSize       *int64   `json:"VolumeSize"`
		ParentSnapshotID string   `json:"ParentSnapshotId"`
		Tags             []ebsTag `json:"Tags"`
		Description      string   `json:"Description"`
		ClientToken      string   `json:"ClientToken"`
		Encrypted        *bool    `json:"Encrypted"`
		KmsKeyArn        string   `json:"KmsKeyArn"`
		Timeout          *int64   `json:"Timeout"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&req); err != nil {
		return validationErr("INVALID_PARAMETER_VALUE", "The request body is not valid JSON: %v", err)
	}
	if req.VolumeSize == nil {
		return validationErr("INVALID_PARAMETER_VALUE", "VolumeSize is required.")
	}
	size := *req.VolumeSize
	if size < 1 || size > 65536 {
		return validationErr("INVALID_VOLUME_SIZE", "VolumeSize %d: a snapshot holds 1 to 65536 GiB.", size)
	}
	if req.Encrypted != nil && *req.Encrypted || req.KmsKeyArn != "" {
		return validationErr("INVALID_CUSTOMER_KEY", "The lab does not encrypt snapshots.")
	}
	if len(req.Description) > 255 {
		return validationErr("INVALID_PARAMETER_VALUE", "The description is longer than 255 characters.")
	}
	timeout := int64(60)
	if req.Timeout != nil {
		timeout = *req.Timeout
		if timeout < 10 || timeout > 4320 {
			return validationErr("INVALID_PARAMETER_VALUE", "Timeout %d: want 10 to 4320 minutes.", timeout)
		}
	}
	tags := map[string]string{}
	for _, t := range req.Tags {
		if t.Key == "" || len(t.Key) > 127 || len(t.Value) > 255 || strings.HasPrefix(strings.ToLower(t.Key), "aws:") {
			return validationErr("INVALID_TAG", "Tag key %q is not valid.", t.Key)
		}
		tags[t.Key] = t.Value
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tickLocked()
	if req.ClientToken != "" {
		for _, sn := range sortedValues(s.st.Snapshots) {
			if sn.Token == req.ClientToken && sn.Source == "direct" {
				if sn.Size != size || sn.Parent != req.ParentSnapshotID {
					return validationErr("INVALID_PARAMETER_VALUE", "The client token was used with different parameters.")
				}
				return s.writeStart(w, reqID, sn)
			}
		}
	}
	lineage := ""
	var base index
	if req.ParentSnapshotID != "" {
		if err := checkSnapshotID(req.ParentSnapshotID); err != nil {
			return err
		}
		parent := s.st.Snapshots[req.ParentSnapshotID]
		if parent == nil {
			return snapshotNotFound(req.ParentSnapshotID)
		}
		if parent.Status != "completed" {
			return validationErr("INVALID_SNAPSHOT_ID", "The parent snapshot %s is %s, not completed.", parent.ID, parent.Status)
		}
		if parent.Size > size {
			return validationErr("INVALID_VOLUME_SIZE", "VolumeSize %d is smaller than the parent snapshot's %d GiB.", size, parent.Size)
		}
		x, err := s.snapIndex(parent.ID)
		if err != nil {
			return err
		}
		base, lineage = x, parent.Lineage
	}
	sn := s.newSnapshotLocked("direct", noVolume, size, req.Description, lineage)
	sn.Parent, sn.Token = req.ParentSnapshotID, req.ClientToken
	sn.Deadline = sn.Start.Add(time.Duration(timeout) * time.Minute)
	if req.ParentSnapshotID != "" {
		if err := writeIndex(s.basePath(sn.ID), base); err != nil {
			delete(s.st.Snapshots, sn.ID)
			return err
		}
	}
	j, err := openJournal(s.journalPath(sn.ID))
	if err != nil {
		delete(s.st.Snapshots, sn.ID)
		os.Remove(s.basePath(sn.ID))
		return err
	}
	s.journals[sn.ID] = j
	if len(tags) > 0 {
		s.st.Tags[sn.ID] = tags
	}
	if err := s.saveLocked(); err != nil {
		return err
	}
	s.log.Info("snapshot started (EBS direct)", "snapshot", sn.ID, "size_gib", size, "parent", sn.Parent)
	return s.writeStart(w, reqID, sn)
}

func (s *Server) basePath(id string) string {
	return strings.TrimSuffix(s.journalPath(id), ".journal") + ".base"
}

func (s *Server) writeStart(w http.ResponseWriter, reqID string, sn *snapshot) error {
	resp := map[string]any{
		"SnapshotId": sn.ID, "OwnerId": s.st.Account, "Status": sn.Status, "StartTime": epoch(sn.Start),
		"VolumeSize": sn.Size, "BlockSize": blockSize, "SseType": "none",
	}
	if sn.Description != "" {
		resp["Description"] = sn.Description
	}
	if sn.Parent != "" {
		resp["ParentSnapshotId"] = sn.Parent
	}
	if tags := s.ebsTagsLocked(sn.ID); len(tags) > 0 {
		resp["Tags"] = tags
	}
	ebsWrite(w, reqID, http.StatusCreated, resp)
	return nil
}

// writableLocked finds a snapshot that takes blocks: one started with
// StartSnapshot and not completed.
func (s *Server) writableLocked(id string) (*snapshot, *journal, error) {
	if err := checkSnapshotID(id); err != nil {
		return nil, nil, err
	}
	sn := s.st.Snapshots[id]
	if sn == nil {
		return nil, nil, snapshotNotFound(id)
	}
	if sn.Source != "direct" || sn.Status != "pending" || sn.Ready {
		if sn.Status == "error" {
			return nil, nil, validationErr("WRITE_REQUEST_TIMEOUT", "The snapshot %s timed out before it was completed.", id)
		}
		state := sn.Status
		if sn.Ready && sn.Status == "pending" {
			state = "being completed"
		}
		if sn.Source != "direct" {
			state = "not one started with StartSnapshot"
		}
		return nil, nil, ebsErr(http.StatusConflict, "ConflictException", "", "The snapshot %s does not accept blocks: it is %s.", id, state)
	}
	j := s.journals[id]
	if j == nil {
		var err error
		if j, err = openJournal(s.journalPath(id)); err != nil {
			return nil, nil, err
		}
		s.journals[id] = j
	}
	return sn, j, nil
}

func (s *Server) putSnapshotBlock(w http.ResponseWriter, r *http.Request, reqID, id, idxStr string) error {
	blk, err := strconv.ParseInt(idxStr, 10, 64)
	if err != nil || blk < 0 {
		return validationErr("INVALID_BLOCK", "The block index '%s' is not valid.", idxStr)
	}
	dl, err := strconv.ParseInt(r.Header.Get("x-amz-Data-Length"), 10, 64)
	if err != nil {
		return validationErr("INVALID_PARAMETER_VALUE", "The x-amz-Data-Length header is required.")
	}
	if dl != blockSize {
		return validationErr("INVALID_PARAMETER_VALUE", "DataLength %d: a block is %d bytes.", dl, blockSize)
	}
	if alg := r.Header.Get("x-amz-Checksum-Algorithm"); alg != "SHA256" {
		return validationErr("INVALID_PARAMETER_VALUE", "ChecksumAlgorithm %q: only SHA256 is supported.", alg)
	}
	want := r.Header.Get("x-amz-Checksum")
	if want == "" {
		return validationErr("INVALID_PARAMETER_VALUE", "The x-amz-Checksum header is required.")
	}
	if p := r.Header.Get("x-amz-Progress"); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 100 {
			return validationErr("INVALID_PARAMETER_VALUE", "Progress %q: want 0 to 100.", p)
		}
	}
	s.mu.Lock()
	s.tickLocked()
	sn, j, err := s.writableLocked(id)
	if err == nil && blk >= sn.Size*blocksPerGiB {
		err = validationErr("INVALID_BLOCK", "Block index %d is beyond the %d GiB snapshot.", blk, sn.Size)
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	data := s.blocks.buffer()
	defer s.blocks.release(data)
	n, err := io.ReadFull(r.Body, data)
	if err != nil {
		return validationErr("INVALID_PARAMETER_VALUE", "The block data is %d bytes, not the %d that x-amz-Data-Length gives.", n, blockSize)
	}
	var extra [1]byte
	if k, _ := io.ReadFull(r.Body, extra[:]); k > 0 {
		return validationErr("INVALID_PARAMETER_VALUE", "The block data is longer than %d bytes.", blockSize)
	}
	sum := sha256.Sum256(data)
	got := base64.StdEncoding.EncodeToString(sum[:])
	if got != want {
		return validationErr("INVALID_PARAMETER_VALUE", "The checksum of the block data does not match the x-amz-Checksum given.")
	}
	s.blocks.gc.RLock()
	h, err := s.blocks.putSum(data, sum)
	if err == nil {
		err = j.add(blk, h)
	}
	s.blocks.gc.RUnlock()
	if err != nil {
		return err
	}
	if p := r.Header.Get("x-amz-Progress"); p != "" {
		n, _ := strconv.Atoi(p)
		s.mu.Lock()
		if s.st.Snapshots[sn.ID] == sn {
			sn.Progress = n
		}
		s.mu.Unlock()
	}
	w.Header().Set("x-amz-Checksum", got)
	w.Header().Set("x-amz-Checksum-Algorithm", "SHA256")
	w.Header().Set("x-amzn-RequestId", reqID)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	io.WriteString(w, "{}")
	return nil
}

func (s *Server) completeSnapshot(w http.ResponseWriter, r *http.Request, reqID, id string) error {
	count, err := strconv.ParseInt(r.Header.Get("x-amz-ChangedBlocksCount"), 10, 64)
	if err != nil || count < 0 {
		return validationErr("INVALID_PARAMETER_VALUE", "The x-amz-ChangedBlocksCount header is required.")
	}
	checksum := r.Header.Get("x-amz-Checksum")
	alg := r.Header.Get("x-amz-Checksum-Algorithm")
	method := r.Header.Get("x-amz-Checksum-Aggregation-Method")
	if checksum != "" && (alg != "SHA256" || method != "LINEAR") {
		return validationErr("INVALID_PARAMETER_VALUE", "An aggregated checksum needs algorithm SHA256 and aggregation method LINEAR.")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tickLocked()
	if err := checkSnapshotID(id); err != nil {
		return err
	}
	sn := s.st.Snapshots[id]
	if sn == nil {
		return snapshotNotFound(id)
	}
	if sn.Source != "direct" {
		return ebsErr(http.StatusConflict, "ConflictException", "", "The snapshot %s was not started with StartSnapshot.", id)
	}
	if sn.Ready || sn.Status != "pending" {
		ebsWrite(w, reqID, http.StatusAccepted, map[string]string{"Status": sn.Status})
		return nil
	}
	written, err := readJournal(s.journalPath(id))
	if err != nil {
		return err
	}
	if int64(len(written)) != count {
		return validationErr("INVALID_PARAMETER_VALUE", "ChangedBlocksCount %d does not match the %d blocks written to snapshot %s.", count, len(written), id)
	}
	if checksum != "" {
		agg := sha256.New()
		for _, e := range written {
			agg.Write(e.Hash[:])
		}
		if base64.StdEncoding.EncodeToString(agg.Sum(nil)) != checksum {
			return validationErr("INVALID_PARAMETER_VALUE", "The aggregated checksum does not match the checksums of the blocks written to snapshot %s.", id)
		}
	}
	full := written
	if sn.Parent != "" {
		base, err := readIndex(s.basePath(id))
		if err != nil {
			return err
		}
		full = base.merge(written)
	}
	stored := int64(len(full)) * blockSize
	if err := writeIndex(s.indexPath(id), full); err != nil {
		return err
	}
	if j := s.journals[id]; j != nil {
		j.close()
		delete(s.journals, id)
	}
	os.Remove(s.basePath(id))
	// the journal stays: it is what was written to this snapshot
	sn.Ready, sn.Bytes, sn.Progress = true, stored, 100
	sn.Until = later(sn.Until, s.now().Add(s.delay))
	s.dirty = true
	if err := s.saveLocked(); err != nil {
		return err
	}
	s.log.Info("snapshot completed (EBS direct)", "snapshot", id, "blocks", count)
	ebsWrite(w, reqID, http.StatusAccepted, map[string]string{"Status": sn.Status})
	return nil
}

// readableLocked finds a completed snapshot and its block index.
func (s *Server) readableLocked(id string) (*snapshot, error) {
	if err := checkSnapshotID(id); err != nil {
		return nil, err
	}
	sn := s.st.Snapshots[id]
	if sn == nil {
		return nil, snapshotNotFound(id)
	}
	if sn.Status != "completed" {
		return nil, validationErr("INVALID_SNAPSHOT_ID", "The snapshot %s is %s; the EBS direct APIs read completed snapshots only.", id, sn.Status)
	}
	return sn, nil
}

// Block tokens are opaque to clients; the lab's are the expiry time and
// an HMAC over snapshot, block index, content hash and expiry, base64.
const tokenLifetime = 7 * 24 * time.Hour

func (s *Server) blockToken(snap string, blk int64, h hash, expiry time.Time) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(expiry.Unix()))
	m := hmac.New(sha256.New, s.st.TokenKey)
	fmt.Fprintf(m, "%s/%d/%x/%d", snap, blk, h, expiry.Unix())
	return base64.StdEncoding.EncodeToString(append(b[:], m.Sum(nil)[:24]...))
}

func (s *Server) checkBlockToken(tok, snap string, blk int64, h hash) error {
	raw, err := base64.StdEncoding.DecodeString(tok)
	if err != nil || len(raw) != 32 {
		return validationErr("INVALID_BLOCK_TOKEN", "The block token is not valid.")
	}
	exp := time.Unix(int64(binary.BigEndian.Uint64(raw[:8])), 0)
	if !hmac.Equal([]byte(s.blockToken(snap, blk, h, exp)), []byte(tok)) {
		return validationErr("INVALID_BLOCK_TOKEN", "The block token is not valid for block %d of snapshot %s.", blk, snap)
	}
	if s.now().After(exp) {
		return validationErr("INVALID_BLOCK_TOKEN", "The block token expired at %s.", exp.UTC().Format(time.RFC3339))
	}
	return nil
}

// listParams reads maxResults (100 to 10000, as EBS clamps it),
// pageToken and startingBlockIndex.
func listParams(r *http.Request) (start int64, limit int, err error) {
	q := r.URL.Query()
	limit = 10000
	if v := q.Get("maxResults"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return 0, 0, validationErr("INVALID_PARAMETER_VALUE", "maxResults %q is not a number.", v)
		}
		limit = max(100, min(10000, n))
	}
	if v := q.Get("startingBlockIndex"); v != "" {
		if start, err = strconv.ParseInt(v, 10, 64); err != nil || start < 0 {
			return 0, 0, validationErr("INVALID_PARAMETER_VALUE", "startingBlockIndex %q is not valid.", v)
		}
	}
	if tok := q.Get("pageToken"); tok != "" {
		raw, err := base64.StdEncoding.DecodeString(tok)
		n, perr := strconv.ParseInt(strings.TrimPrefix(string(raw), "next:"), 10, 64)
		if err != nil || perr != nil || !strings.HasPrefix(string(raw), "next:") || n < 0 {
			return 0, 0, validationErr("INVALID_PAGE_TOKEN", "The page token is not valid.")
		}
		start = n
	}
	return start, limit, nil
}

func pageToken(next int64) string {
	return base64.StdEncoding.EncodeToString([]byte("next:" + strconv.FormatInt(next, 10)))
}

func (s *Server) listSnapshotBlocks(w http.ResponseWriter, r *http.Request, reqID, id string) error {
	start, limit, err := listParams(r)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.tickLocked()
	sn, err := s.readableLocked(id)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	x, err := s.snapIndex(id)
	if err != nil {
		return err
	}
	exp := s.now().Add(tokenLifetime).Truncate(time.Second)
	type block struct {
		BlockIndex int64  `json:"BlockIndex"`
		BlockToken string `json:"BlockToken"`
	}
	blocks := []block{}
	rest := x.from(start)
	for i, e := range rest {
		if i == limit {
			break
		}
		blocks = append(blocks, block{e.Index, s.blockToken(id, e.Index, e.Hash, exp)})
	}
	resp := map[string]any{"Blocks": blocks, "ExpiryTime": epoch(exp), "VolumeSize": sn.Size, "BlockSize": blockSize}
	if len(rest) > limit {
		resp["NextToken"] = pageToken(rest[limit].Index)
	}
	ebsWrite(w, reqID, http.StatusOK, resp)
	return nil
}

func (s *Server) listChangedBlocks(w http.ResponseWriter, r *http.Request, reqID, second string) error {
	start, limit, err := listParams(r)
	if err != nil {
		return err
	}
	first := r.URL.Query().Get("firstSnapshotId")
	s.mu.Lock()
	s.tickLocked()
	sn2, err := s.readableLocked(second)
	var sn1 *snapshot
	if err == nil && first != "" {
		sn1, err = s.readableLocked(first)
		if err == nil && sn1.Lineage != sn2.Lineage {
			err = validationErr("UNRELATED_SNAPSHOTS", "The snapshots %s and %s are not of the same volume or snapshot lineage.", first, second)
		}
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	x2, err := s.snapIndex(second)
	if err != nil {
		return err
	}
	var x1 index
	if sn1 != nil {
		if x1, err = s.snapIndex(first); err != nil {
			return err
		}
	}
	exp := s.now().Add(tokenLifetime).Truncate(time.Second)
	type changed struct {
		BlockIndex       int64  `json:"BlockIndex"`
		FirstBlockToken  string `json:"FirstBlockToken,omitempty"`
		SecondBlockToken string `json:"SecondBlockToken,omitempty"`
	}
	out := []changed{}
	a, b := x1.from(start), x2.from(start)
	next := int64(-1)
	for len(a) > 0 || len(b) > 0 {
		var c changed
		switch {
		case len(b) == 0 || len(a) > 0 && a[0].Index < b[0].Index:
			c = changed{BlockIndex: a[0].Index, FirstBlockToken: s.blockToken(first, a[0].Index, a[0].Hash, exp)}
			a = a[1:]
		case len(a) == 0 || b[0].Index < a[0].Index:
			c = changed{BlockIndex: b[0].Index, SecondBlockToken: s.blockToken(second, b[0].Index, b[0].Hash, exp)}
			b = b[1:]
		default:
			if a[0].Hash == b[0].Hash {
				a, b = a[1:], b[1:]
				continue
			}
			c = changed{BlockIndex: b[0].Index,
				FirstBlockToken:  s.blockToken(first, a[0].Index, a[0].Hash, exp),
				SecondBlockToken: s.blockToken(second, b[0].Index, b[0].Hash, exp)}
			a, b = a[1:], b[1:]
		}
		if len(out) == limit {
			next = c.BlockIndex
			break
		}
		out = append(out, c)
	}
	resp := map[string]any{"ChangedBlocks": out, "ExpiryTime": epoch(exp), "VolumeSize": sn2.Size, "BlockSize": blockSize}
	if next >= 0 {
		resp["NextToken"] = pageToken(next)
	}
	ebsWrite(w, reqID, http.StatusOK, resp)
	return nil
}

func (s *Server) getSnapshotBlock(w http.ResponseWriter, r *http.Request, reqID, id, idxStr string) error {
	blk, err := strconv.ParseInt(idxStr, 10, 64)
	if err != nil || blk < 0 {
		return validationErr("INVALID_BLOCK", "The block index '%s' is not valid.", idxStr)
	}
	tok := r.URL.Query().Get("blockToken")
	if tok == "" {
		return validationErr("INVALID_BLOCK_TOKEN", "The blockToken parameter is required.")
	}
	s.mu.Lock()
	s.tickLocked()
	_, err = s.readableLocked(id)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	x, err := s.snapIndex(id)
	if err != nil {
		return err
	}
	h, ok := x.find(blk)
	if !ok {
		// a token names content; a block the snapshot does not hold has none
		return validationErr("INVALID_BLOCK_TOKEN", "The block token is not valid for block %d of snapshot %s.", blk, id)
	}
	if err := s.checkBlockToken(tok, id, blk, h); err != nil {
		return err
	}
	data := s.blocks.buffer()
	defer s.blocks.release(data)
	if err := s.blocks.read(h, data); err != nil {
		return err
	}
	hd := w.Header()
	hd.Set("x-amzn-RequestId", reqID)
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("Content-Length", strconv.Itoa(blockSize))
	hd.Set("x-amz-Data-Length", strconv.Itoa(blockSize))
	hd.Set("x-amz-Checksum", base64.StdEncoding.EncodeToString(h[:]))
	hd.Set("x-amz-Checksum-Algorithm", "SHA256")
	w.WriteHeader(http.StatusOK)
	w.Write(data)
	return nil
}
