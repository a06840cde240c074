package awslab

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/lab/labkit"
)

// S3 state on disk: s3/<bucket>/bucket.json; each object's metadata in
// s3/<bucket>/objects/<sha256(key)[:2]>/<sha256(key)>.json naming its
// data file in s3/<bucket>/data/ (a new data file per write, so a reader
// of the old content is never disturbed, and metadata always names whole
// data); multipart uploads in s3/<bucket>/uploads/<upload ID>/ with
// upload.json, part-N data and part-N.json. Metadata is written
// atomically (temporary file, sync, rename); the lab keeps it in memory
// and reads the data from the files.

type bucket struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	Region  string    `json:"region"`

	objects map[string]*object
	uploads map[string]*upload
}

type object struct {
	Key         string            `json:"key"`
	Size        int64             `json:"size"`
	ETag        string            `json:"etag"` // without quotes
	Modified    time.Time         `json:"modified"`
	ContentType string            `json:"content_type,omitempty"`
	Headers     map[string]string `json:"headers,omitempty"` // Content-Encoding, Cache-Control, ...
	Meta        map[string]string `json:"meta,omitempty"`    // x-amz-meta-*
	Tags        map[string]string `json:"tags,omitempty"`
	ChecksumAlg string            `json:"checksum_alg,omitempty"` // CRC32, CRC32C, SHA1, SHA256, CRC64NVME
	Checksum    string            `json:"checksum,omitempty"`     // base64
	Data        string            `json:"data"`                   // data file name
	PartSizes   []int64           `json:"part_sizes,omitempty"`   // multipart objects
}

type upload struct {
	ID          string            `json:"id"`
	Key         string            `json:"key"`
	Initiated   time.Time         `json:"initiated"`
	ContentType string            `json:"content_type,omitempty"`
	Headers     map[string]string `json:"headers,omitempty"`
	Meta        map[string]string `json:"meta,omitempty"`
	Tags        map[string]string `json:"tags,omitempty"`
	ChecksumAlg string            `json:"checksum_alg,omitempty"`

	parts map[int]*part
}

type part struct {
	Number   int       `json:"number"`
	Size     int64     `json:"size"`
	ETag     string    `json:"etag"`
	Modified time.Time `json:"modified"`
	Checksum string    `json:"checksum,omitempty"`
}

func (s *Server) bucketDir(name string) string { return filepath.Join(s.dir, "s3", name) }

func keyHash(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:])
}

func (s *Server) objectMetaPath(b, key string) string {
	h := keyHash(key)
	return filepath.Join(s.bucketDir(b), "objects", h[:2], h+".json")
}

func (s *Server) dataPath(b, name string) string {
	return filepath.Join(s.bucketDir(b), "data", name)
}

func (s *Server) uploadDir(b, id string) string {
	return filepath.Join(s.bucketDir(b), "uploads", id)
}

// loadBuckets reads every bucket's metadata.
func (s *Server) loadBuckets() error {
	ents, err := os.ReadDir(filepath.Join(s.dir, "s3"))
	if err != nil {
		return fmt.Errorf("aws lab: read buckets: %w", err)
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := s.bucketDir(e.Name())
		raw, err := os.ReadFile(filepath.Join(dir, "bucket.json"))
		if os.IsNotExist(err) {
			continue // a bucket whose creation did not finish
		}
		if err != nil {
			return fmt.Errorf("aws lab: bucket %s: %w", e.Name(), err)
		}
		b := &bucket{objects: map[string]*object{}, uploads: map[string]*upload{}}
		if err := json.Unmarshal(raw, b); err != nil || b.Name != e.Name() {
			return fmt.Errorf("aws lab: bucket %s: metadata unreadable: %w", e.Name(), errs.ErrCorrupt)
		}
		filepath.WalkDir(filepath.Join(dir, "objects"), func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || filepath.Ext(path) != ".json" {
				return nil
			}
			raw, err := os.ReadFile(path)
			if err != nil {
				return nil
			}
			var o object
			if json.Unmarshal(raw, &o) != nil || o.Data == "" {
				s.log.Warn("s3 object metadata unreadable; ignored", "bucket", b.Name, "file", path)
				return nil
			}
			if _, err := os.Stat(s.dataPath(b.Name, o.Data)); err != nil {
				s.log.Warn("s3 object data missing; ignored", "bucket", b.Name, "key", o.Key)
				return nil
			}
			b.objects[o.Key] = &o
			return nil
		})
		ups, _ := os.ReadDir(filepath.Join(dir, "uploads"))
		for _, ue := range ups {
			udir := filepath.Join(dir, "uploads", ue.Name())
			raw, err := os.ReadFile(filepath.Join(udir, "upload.json"))
			if err != nil {
				continue
			}
			u := &upload{parts: map[int]*part{}}
			if json.Unmarshal(raw, u) != nil || u.ID != ue.Name() {
				continue
			}
			files, _ := os.ReadDir(udir)
			for _, f := range files {
				if !strings.HasPrefix(f.Name(), "part-") || filepath.Ext(f.Name()) != ".json" {
					continue
				}
				raw, err := os.ReadFile(filepath.Join(udir, f.Name()))
				var p part
				if err != nil || json.Unmarshal(raw, &p) != nil {
					continue
				}
				u.parts[p.Number] = &p
			}
			b.uploads[u.ID] = u
		}
		// data files no metadata names are left over from crashes
		used := map[string]bool{}
		for _, o := range b.objects {
			used[o.Data] = true
		}
		if files, err := os.ReadDir(filepath.Join(dir, "data")); err == nil {
			for _, f := range files {
				if !used[f.Name()] {
					os.Remove(filepath.Join(dir, "data", f.Name()))
				}
			}
		}
		s.buckets[b.Name] = b
	}
	return nil
}

// createBucketLocked records a new bucket.
func (s *Server) createBucketLocked(name string) error {
	dir := s.bucketDir(name)
	for _, sub := range []string{"objects", "data", "uploads"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	b := &bucket{Name: name, Created: s.now().UTC(), Region: s.region, objects: map[string]*object{}, uploads: map[string]*upload{}}
	raw, _ := json.Marshal(b)
	if err := labkit.WriteFile(filepath.Join(dir, "bucket.json"), raw, 0o644); err != nil {
		return err
	}
	s.buckets[name] = b
	return nil
}

// commitObjectLocked makes the data file at tmp the content of key:
// the file is moved into the bucket's data directory, then the metadata
// is written. The previous content's data file is removed.
func (s *Server) commitObjectLocked(b *bucket, o *object, tmp string) error {
	o.Data = randHex(24)
	if err := os.Rename(tmp, s.dataPath(b.Name, o.Data)); err != nil {
		return fmt.Errorf("store object %s: %w", o.Key, err)
	}
	if err := s.writeObjectMeta(b, o); err != nil {
		os.Remove(s.dataPath(b.Name, o.Data))
		return err
	}
	if old := b.objects[o.Key]; old != nil && old.Data != o.Data {
		os.Remove(s.dataPath(b.Name, old.Data))
	}
	b.objects[o.Key] = o
	return nil
}

func (s *Server) writeObjectMeta(b *bucket, o *object) error {
	path := s.objectMetaPath(b.Name, o.Key)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("store object %s: %w", o.Key, err)
	}
	raw, _ := json.Marshal(o)
	return labkit.WriteFile(path, raw, 0o644)
}

func (s *Server) deleteObjectLocked(b *bucket, key string) {
	o := b.objects[key]
	if o == nil {
		return
	}
	os.Remove(s.objectMetaPath(b.Name, key))
	os.Remove(s.dataPath(b.Name, o.Data))
	delete(b.objects, key)
}

// putObjectFile stores the file at path (which it takes over) as an
// object; the imports' and exports' way into S3.
func (s *Server) putObjectFile(bucketName, key, path, contentType string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	h := md5.New()
	n, err := io.Copy(h, f)
	f.Close()
	if err != nil {
		return fmt.Errorf("hash %s: %w", path, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.buckets[bucketName]
	if b == nil {
		return fmt.Errorf("bucket %s: %w", bucketName, errs.ErrNotFound)
	}
	o := &object{Key: key, Size: n, ETag: hex.EncodeToString(h.Sum(nil)), Modified: s.now().UTC(), ContentType: contentType}
	return s.commitObjectLocked(b, o, path)
}

// objectFile returns the data file and size of an object, for imports.
func (s *Server) objectFileLocked(bucketName, key string) (string, int64, error) {
	b := s.buckets[bucketName]
	if b == nil {
		return "", 0, fmt.Errorf("bucket %s: %w", bucketName, errs.ErrNotFound)
	}
	o := b.objects[key]
	if o == nil {
		return "", 0, fmt.Errorf("object s3://%s/%s: %w", bucketName, key, errs.ErrNotFound)
	}
	return s.dataPath(b.Name, o.Data), o.Size, nil
}
