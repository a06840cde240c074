package awslab

import (
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/ferry-project/ferry/internal/lab/labkit"
)

// Multipart uploads: CreateMultipartUpload, UploadPart, ListParts,
// ListMultipartUploads, CompleteMultipartUpload, AbortMultipartUpload.

// completePart is one part of a CompleteMultipartUpload body.
type completePart struct {
	Number   int
	ETag     string
	Checksum map[string]string // algorithm (CRC32...) to base64 value
}

// parseComplete parses <CompleteMultipartUpload><Part><PartNumber/><ETag/>
// [<ChecksumCRC32/>...]</Part>...</CompleteMultipartUpload>.
func parseComplete(body []byte) ([]completePart, error) {
	var c struct {
		XMLName xml.Name `xml:"CompleteMultipartUpload"`
		Parts   []struct {
			PartNumber        int    `xml:"PartNumber"`
			ETag              string `xml:"ETag"`
			ChecksumCRC32     string `xml:"ChecksumCRC32"`
			ChecksumCRC32C    string `xml:"ChecksumCRC32C"`
			ChecksumCRC64NVME string `xml:"ChecksumCRC64NVME"`
			ChecksumSHA1      string `xml:"ChecksumSHA1"`
			ChecksumSHA256    string `xml:"ChecksumSHA256"`
		} `xml:"Part"`
	}
	if err := xml.Unmarshal(body, &c); err != nil {
		return nil, err
	}
	if len(c.Parts) == 0 {
		return nil, errors.New("no parts")
	}
	var out []completePart
	for _, p := range c.Parts {
		if p.PartNumber < 1 || p.PartNumber > maxPartNumber {
			return nil, fmt.Errorf("part number %d", p.PartNumber)
		}
		cp := completePart{Number: p.PartNumber, ETag: strings.Trim(strings.TrimSpace(p.ETag), `"`), Checksum: map[string]string{}}
		for alg, v := range map[string]string{"CRC32": p.ChecksumCRC32, "CRC32C": p.ChecksumCRC32C, "CRC64NVME": p.ChecksumCRC64NVME, "SHA1": p.ChecksumSHA1, "SHA256": p.ChecksumSHA256} {
			if v != "" {
				cp.Checksum[alg] = v
			}
		}
		out = append(out, cp)
	}
	return out, nil
}

func (s *Server) createUpload(w http.ResponseWriter, r *http.Request, reqID string, b *bucket, key string) error {
	tags, err := parseTaggingHeader(r.Header.Get("X-Amz-Tagging"))
	if err != nil {
		return s3Err(http.StatusBadRequest, "InvalidArgument", "The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL query parameters without tag name duplicates.")
	}
	ct, headers, meta := objectHeaders(r)
	if ct == "" {
		ct = "binary/octet-stream"
	}
	alg := strings.ToUpper(r.Header.Get("X-Amz-Checksum-Algorithm"))
	if alg != "" && newChecksum(strings.ToLower(alg)) == nil {
		return s3Err(http.StatusBadRequest, "InvalidRequest", "Checksum algorithm %s is not supported.", alg)
	}
	u := &upload{ID: base64.RawURLEncoding.EncodeToString([]byte(randHex(32))), Key: key, Initiated: s.now().UTC(),
		ContentType: ct, Headers: headers, Meta: meta, Tags: tags, ChecksumAlg: alg, parts: map[int]*part{}}
	dir := s.uploadDir(b.Name, u.ID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	raw, _ := json.Marshal(u)
	if err := labkit.WriteFile(filepath.Join(dir, "upload.json"), raw, 0o644); err != nil {
		os.RemoveAll(dir)
		return err
	}
	s.mu.Lock()
	b.uploads[u.ID] = u
	s.mu.Unlock()
	if alg != "" {
		w.Header().Set("x-amz-checksum-algorithm", alg)
		w.Header().Set("x-amz-checksum-type", "COMPOSITE")
	}
	s3Write(w, reqID, http.StatusOK, "InitiateMultipartUploadResult", []*node{el("Bucket", b.Name), el("Key", key), el("UploadId", u.ID)})
	return nil
}

func (s *Server) uploadLocked(b *bucket, key, id string) (*upload, error) {
	u := b.uploads[id]
	if u == nil || u.Key != key {
		return nil, noSuchUpload(id)
	}
	return u, nil
}

func (s *Server) uploadPart(w http.ResponseWriter, r *http.Request, reqID string, b *bucket, key string, q url.Values, body *payloadReader) error {
	n, err := strconv.Atoi(q.Get("partNumber"))
	if err != nil || n < 1 || n > maxPartNumber {
		return s3Err(http.StatusBadRequest, "InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive")
	}
	id := q.Get("uploadId")
	s.mu.Lock()
	_, err = s.uploadLocked(b, key, id)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	rec, err := s.receiveBody(r, body, maxPutSize)
	if err != nil {
		return err
	}
	defer os.Remove(rec.tmp)
	p := &part{Number: n, Size: rec.size, ETag: hex.EncodeToString(rec.md5), Modified: s.now().UTC(), Checksum: rec.checksum}
	s.mu.Lock()
	defer s.mu.Unlock()
	u, err := s.uploadLocked(b, key, id)
	if err != nil {
		return err
	}
	if u.ChecksumAlg != "" && rec.alg != "" && rec.alg != u.ChecksumAlg {
		return s3Err(http.StatusBadRequest, "InvalidRequest", "Checksum Type mismatch occurred, expected checksum Type: %s, actual checksum Type: %s", strings.ToLower(u.ChecksumAlg), strings.ToLower(rec.alg))
	}
	dir := s.uploadDir(b.Name, id)
	if err := os.Rename(rec.tmp, filepath.Join(dir, fmt.Sprintf("part-%d", n))); err != nil {
		return err
	}
	raw, _ := json.Marshal(p)
	if err := labkit.WriteFile(filepath.Join(dir, fmt.Sprintf("part-%d.json", n)), raw, 0o644); err != nil {
		return err
	}
	u.parts[n] = p
	w.Header().Set("x-amz-request-id", reqID)
	w.Header().Set("ETag", quoteETag(p.ETag))
	if rec.alg != "" {
		w.Header().Set("x-amz-checksum-"+strings.ToLower(rec.alg), rec.checksum)
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func (s *Server) listParts(w http.ResponseWriter, reqID string, b *bucket, key, id string, q url.Values) error {
	maxParts := 1000
	if v := q.Get("max-parts"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return s3Err(http.StatusBadRequest, "InvalidArgument", "Provided max-parts not an integer or within integer range")
		}
		maxParts = min(n, 1000)
	}
	marker := 0
	if v := q.Get("part-number-marker"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return s3Err(http.StatusBadRequest, "InvalidArgument", "Provided part-number-marker not an integer or within integer range")
		}
		marker = n
	}
	s.mu.Lock()
	u, err := s.uploadLocked(b, key, id)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	var nums []int
	for n := range u.parts {
		if n > marker {
			nums = append(nums, n)
		}
	}
	slices.Sort(nums)
	truncated := len(nums) > maxParts
	if truncated {
		nums = nums[:maxParts]
	}
	var parts []*node
	for _, n := range nums {
		p := u.parts[n]
		kids := []*node{el("PartNumber", p.Number), el("LastModified", s3Time(p.Modified)), el("ETag", quoteETag(p.ETag)), el("Size", p.Size)}
		if u.ChecksumAlg != "" && p.Checksum != "" {
			kids = append(kids, el("Checksum"+u.ChecksumAlg, p.Checksum))
		}
		parts = append(parts, el("Part", kids))
	}
	acct := s.st.Account
	alg := u.ChecksumAlg
	s.mu.Unlock()
	next := marker
	if len(nums) > 0 {
		next = nums[len(nums)-1]
	}
	kids := []*node{
		el("Bucket", b.Name), el("Key", key), el("UploadId", id),
		el("Initiator", el("ID", acct), el("DisplayName", "ferry-lab")),
		el("Owner", el("ID", acct), el("DisplayName", "ferry-lab")),
		el("StorageClass", "STANDARD"),
		el("PartNumberMarker", marker), el("NextPartNumberMarker", next), el("MaxParts", maxParts), el("IsTruncated", truncated),
	}
	if alg != "" {
		kids = append(kids, el("ChecksumAlgorithm", alg))
	}
	s3Write(w, reqID, http.StatusOK, "ListPartsResult", append(kids, parts...))
	return nil
}

func (s *Server) listUploads(w http.ResponseWriter, reqID, name string, q url.Values) error {
	s.mu.Lock()
	b := s.buckets[name]
	if b == nil {
		s.mu.Unlock()
		return noSuchBucket(name)
	}
	prefix := q.Get("prefix")
	var ups []*upload
	for _, u := range b.uploads {
		if strings.HasPrefix(u.Key, prefix) {
			ups = append(ups, u)
		}
	}
	sort.Slice(ups, func(i, j int) bool {
		if ups[i].Key != ups[j].Key {
			return ups[i].Key < ups[j].Key
		}
		return ups[i].Initiated.Before(ups[j].Initiated)
	})
	var items []*node
	for _, u := range ups {
		items = append(items, el("Upload", el("Key", u.Key), el("UploadId", u.ID), el("Initiated", s3Time(u.Initiated)), el("StorageClass", "STANDARD")))
	}
	s.mu.Unlock()
	kids := []*node{el("Bucket", name), el("KeyMarker", ""), el("UploadIdMarker", ""), el("Prefix", prefix), el("MaxUploads", 1000), el("IsTruncated", false)}
	s3Write(w, reqID, http.StatusOK, "ListMultipartUploadsResult", append(kids, items...))
	return nil
}

func (s *Server) abortUpload(w http.ResponseWriter, reqID string, b *bucket, key, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.uploadLocked(b, key, id); err != nil {
		return err
	}
	delete(b.uploads, id)
	os.RemoveAll(s.uploadDir(b.Name, id))
	w.Header().Set("x-amz-request-id", reqID)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) completeUpload(w http.ResponseWriter, r *http.Request, reqID string, b *bucket, key, id string) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxXMLBody+1))
	if err != nil {
		return err
	}
	if len(body) > maxXMLBody {
		return s3Err(http.StatusBadRequest, "MalformedXML", "The XML you provided was too large.")
	}
	parts, err := parseComplete(body)
	if err != nil {
		return s3Err(http.StatusBadRequest, "MalformedXML", "The XML you provided was not well-formed or did not validate against our published schema.")
	}
	s.mu.Lock()
	u, err := s.uploadLocked(b, key, id)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	var chosen []*part
	for i, cp := range parts {
		if i > 0 && cp.Number <= parts[i-1].Number {
			s.mu.Unlock()
			return s3Err(http.StatusBadRequest, "InvalidPartOrder", "The list of parts was not in ascending order. Parts must be ordered by part number.")
		}
		p := u.parts[cp.Number]
		if p == nil || p.ETag != cp.ETag {
			s.mu.Unlock()
			e := s3Err(http.StatusBadRequest, "InvalidPart", "One or more of the specified parts could not be found.  The part may not have been uploaded, or the specified entity tag may not match the part's entity tag.")
			e.Extra = []*node{el("PartNumber", cp.Number), el("ETag", cp.ETag)}
			return e
		}
		for alg, v := range cp.Checksum {
			if alg != u.ChecksumAlg || v != p.Checksum {
				s.mu.Unlock()
				return s3Err(http.StatusBadRequest, "InvalidPart", "The %s checksum of part %d does not match the part's.", alg, cp.Number)
			}
		}
		chosen = append(chosen, p)
	}
	for i, p := range chosen {
		if i < len(chosen)-1 && p.Size < minPartSize {
			s.mu.Unlock()
			e := s3Err(http.StatusBadRequest, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed object size.")
			e.Extra = []*node{el("ProposedSize", p.Size), el("MinSizeAllowed", minPartSize), el("PartNumber", p.Number), el("ETag", quoteETag(p.ETag))}
			return e
		}
	}
	dir := s.uploadDir(b.Name, id)
	s.mu.Unlock()
	// concatenate the parts outside the lock
	f, err := s.tmpFile("s3-mpu-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	m := md5.New()
	var total int64
	var sizes []int64
	for _, p := range chosen {
		pf, err := os.Open(filepath.Join(dir, fmt.Sprintf("part-%d", p.Number)))
		if err != nil {
			f.Close()
			return noSuchUpload(id)
		}
		n, err := io.Copy(f, pf)
		pf.Close()
		if err != nil {
			f.Close()
			return err
		}
		raw, _ := hex.DecodeString(p.ETag)
		m.Write(raw)
		total += n
		sizes = append(sizes, n)
	}
	if err := f.Close(); err != nil {
		return err
	}
	etag := hex.EncodeToString(m.Sum(nil)) + "-" + strconv.Itoa(len(chosen))
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.uploads[id] != u {
		return noSuchUpload(id)
	}
	o := &object{Key: key, Size: total, ETag: etag, Modified: s.now().UTC(), ContentType: u.ContentType,
		Headers: u.Headers, Meta: u.Meta, Tags: u.Tags, PartSizes: sizes}
	if u.ChecksumAlg != "" {
		if cs, ok := compositeChecksum(u.ChecksumAlg, chosen); ok {
			o.ChecksumAlg, o.Checksum = u.ChecksumAlg, cs
		}
	}
	if err := s.commitObjectLocked(b, o, tmp); err != nil {
		return err
	}
	delete(b.uploads, id)
	os.RemoveAll(dir)
	if o.ChecksumAlg != "" {
		w.Header().Set("x-amz-checksum-"+strings.ToLower(o.ChecksumAlg), o.Checksum)
		w.Header().Set("x-amz-checksum-type", "COMPOSITE")
	}
	s3Write(w, reqID, http.StatusOK, "CompleteMultipartUploadResult", []*node{
		el("Location", "/"+b.Name+"/"+key), el("Bucket", b.Name), el("Key", key), el("ETag", quoteETag(etag)),
	})
	return nil
}

// compositeChecksum is S3's checksum of a multipart object: the checksum
// of the parts' binary checksums, then "-N".
func compositeChecksum(alg string, parts []*part) (string, bool) {
	h := newChecksum(strings.ToLower(alg))
	for _, p := range parts {
		raw, err := base64.StdEncoding.DecodeString(p.Checksum)
		if err != nil || p.Checksum == "" {
			return "", false
		}
		h.Write(raw)
	}
	return base64.StdEncoding.EncodeToString(h.Sum(nil)) + "-" + strconv.Itoa(len(parts)), true
}
