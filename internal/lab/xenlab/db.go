package xenlab

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/lab/labkit"
)

const (
	nullRef   = "OpaqueRef:NULL"
	refPrefix = "OpaqueRef:"
	// stateVersion is the version of the state file's layout.
	stateVersion = 1
	stateFile    = "state.json"
	// maxTombstones bounds the deleted objects remembered for event.from.
	maxTombstones = 10000
	// datetimeFormat is how xapi writes datetime values in JSON-RPC.
	datetimeFormat = "20060102T15:04:05Z"
)

// object is one row of the lab's database.
type object struct {
	Class    string         `json:"class"`
	Ref      string         `json:"ref"`
	Created  int64          `json:"created"`
	Modified int64          `json:"modified"`
	Rec      map[string]any `json:"record"`
}

func (o *object) str(f string) string { s, _ := o.Rec[f].(string); return s }
func (o *object) int(f string) int64  { n, _ := o.Rec[f].(int64); return n }
func (o *object) bool(f string) bool  { b, _ := o.Rec[f].(bool); return b }
func (o *object) refs(f string) []string {
	a, _ := o.Rec[f].([]any)
	out := make([]string, 0, len(a))
	for _, e := range a {
		if s, ok := e.(string); ok {
			out = append(out, s)
		}
	}
	return out
}
func (o *object) smap(f string) map[string]any {
	m, _ := o.Rec[f].(map[string]any)
	if m == nil {
		m = map[string]any{}
		o.Rec[f] = m
	}
	return m
}

// tombstone remembers a deleted object for event.from.
type tombstone struct {
	Class string `json:"class"`
	Ref   string `json:"ref"`
	Gen   int64  `json:"gen"`
}

// userRec is a user and the PBKDF2 hash of its password.
type userRec struct {
	Salt []byte `json:"salt"`
	Hash []byte `json:"hash"`
	Iter int    `json:"iterations"`
}

// vdiMeta is what the lab keeps about a VDI beyond its XAPI record.
type vdiMeta struct {
	// Chain is the CBT chain the VDI belongs to ("" when CBT was never
	// enabled on it or its source), Epoch its position in it: for a live
	// VDI the epoch its writes go to, for a snapshot the last epoch it
	// contains.
	Chain string `json:"chain,omitempty"`
	Epoch int    `json:"epoch,omitempty"`
	// NoData is set by VDI.data_destroy: only the CBT metadata is left.
	NoData bool `json:"no_data,omitempty"`
}

// db is the lab's database: every object by reference, the event
// generation counter, deleted objects, users and VDI metadata. It is not
// safe for concurrent use; the Server's mutex guards it.
type db struct {
	schema  *schema
	objs    map[string]*object
	byClass map[string]map[string]*object
	gen     int64
	tombs   []tombstone
	users   map[string]userRec
	vdis    map[string]*vdiMeta // by VDI uuid
	notify  chan struct{}       // closed and replaced whenever gen moves
	dirty   bool
}

type persisted struct {
	Version    int                 `json:"version"`
	Generation int64               `json:"generation"`
	Objects    []*object           `json:"objects"`
	Tombstones []tombstone         `json:"tombstones"`
	Users      map[string]userRec  `json:"users"`
	VDIs       map[string]*vdiMeta `json:"vdis"`
}

func newDB(s *schema) *db {
	return &db{
		schema:  s,
		objs:    map[string]*object{},
		byClass: map[string]map[string]*object{},
		users:   map[string]userRec{},
		vdis:    map[string]*vdiMeta{},
		notify:  make(chan struct{}),
	}
}

// load reads the state file in dir; a missing file leaves the db empty.
func (d *db) load(dir string) (bool, error) {
	path := filepath.Join(dir, stateFile)
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read lab state %s: %w", path, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var p persisted
	if err := dec.Decode(&p); err != nil {
		return false, fmt.Errorf("lab state %s: %v: %w", path, err, errs.ErrCorrupt)
	}
	if p.Version != stateVersion {
		return false, fmt.Errorf("lab state %s: version %d, this lab reads %d: %w", path, p.Version, stateVersion, errs.ErrUnimplemented)
	}
	d.gen = p.Generation
	d.tombs = p.Tombstones
	if p.Users != nil {
		d.users = p.Users
	}
	if p.VDIs != nil {
		d.vdis = p.VDIs
	}
	for _, o := range p.Objects {
		ci := d.schema.classes[o.Class]
		if ci == nil {
			return false, fmt.Errorf("lab state %s: object %s of unknown class %q: %w", path, o.Ref, o.Class, errs.ErrCorrupt)
		}
		rec := ci.newRecord()
		for k, v := range o.Rec {
			f := ci.fields[k]
			if f == nil {
				continue // a field this datamodel no longer has
			}
			c, err := convert(f.Type, v)
			if err != nil {
				return false, fmt.Errorf("lab state %s: %s %s field %s: %v: %w", path, o.Class, o.Ref, k, err, errs.ErrCorrupt)
			}
			rec[k] = c
		}
		o.Rec = rec
		d.put(o)
	}
	return true, nil
}

// save writes the state file atomically: a temporary file, synced, then
// renamed over the old one.
func (d *db) save(dir string) error {
	p := persisted{Version: stateVersion, Generation: d.gen, Tombstones: d.tombs, Users: d.users, VDIs: d.vdis}
	refs := make([]string, 0, len(d.objs))
	for r := range d.objs {
		refs = append(refs, r)
	}
	sort.Strings(refs)
	for _, r := range refs {
		p.Objects = append(p.Objects, d.objs[r])
	}
	b, err := json.Marshal(&p)
	if err != nil {
		return fmt.Errorf("encode lab state: %w", err)
	}
	if err := labkit.WriteFile(filepath.Join(dir, stateFile), b, 0o600); err != nil {
		return err
	}
	d.dirty = false
	return nil
}

func (d *db) put(o *object) {
	d.objs[o.Ref] = o
	m := d.byClass[o.Class]
	if m == nil {
		m = map[string]*object{}
		d.byClass[o.Class] = m
	}
	m[o.Ref] = o
}

// bump moves the generation on and wakes event.from waiters.
func (d *db) bump() int64 {
	d.gen++
	d.dirty = true
	close(d.notify)
	d.notify = make(chan struct{})
	return d.gen
}

// get returns the object of class at ref, or HANDLE_INVALID.
func (d *db) get(class, ref string) (*object, error) {
	if o := d.byClass[class][ref]; o != nil {
		return o, nil
	}
	return nil, apiErr(errHandleInvalid, class, ref)
}

// all returns the objects of class ordered by reference.
func (d *db) all(class string) []*object {
	m := d.byClass[class]
	out := make([]*object, 0, len(m))
	for _, o := range m {
		out = append(out, o)
	}
	slices.SortFunc(out, func(a, b *object) int {
		switch {
		case a.Ref < b.Ref:
			return -1
		case a.Ref > b.Ref:
			return 1
		}
		return 0
	})
	return out
}

// insert adds a new object of class with rec laid over the defaults, and
// gives it a reference and (unless rec has one) a uuid.
func (d *db) insert(class string, rec map[string]any) *object {
	ci := d.schema.classes[class]
	full := ci.newRecord()
	for k, v := range rec {
		full[k] = v
	}
	if u, _ := full["uuid"].(string); u == "" {
		full["uuid"] = newUUID()
	}
	g := d.bump()
	o := &object{Class: class, Ref: refPrefix + newUUID(), Created: g, Modified: g, Rec: full}
	d.put(o)
	return o
}

// set changes fields of o and records the modification.
func (d *db) set(o *object, kv ...any) {
	for i := 0; i+1 < len(kv); i += 2 {
		o.Rec[kv[i].(string)] = kv[i+1]
	}
	o.Modified = d.bump()
}

// touch records a modification made in place (to a map or set field).
func (d *db) touch(o *object) { o.Modified = d.bump() }

// remove deletes o and remembers it for event.from.
func (d *db) remove(o *object) {
	delete(d.objs, o.Ref)
	delete(d.byClass[o.Class], o.Ref)
	d.tombs = append(d.tombs, tombstone{Class: o.Class, Ref: o.Ref, Gen: d.bump()})
	if len(d.tombs) > maxTombstones {
		d.tombs = append([]tombstone(nil), d.tombs[len(d.tombs)-maxTombstones:]...)
	}
}

// byUUID finds an object of class by uuid.
func (d *db) byUUID(class, uuid string) *object {
	for _, o := range d.byClass[class] {
		if o.str("uuid") == uuid {
			return o
		}
	}
	return nil
}

// addRef appends ref to the set field f of o, once.
func (d *db) addRef(o *object, f, ref string) {
	if slices.Contains(o.refs(f), ref) {
		return
	}
	a, _ := o.Rec[f].([]any)
	o.Rec[f] = append(a, ref)
	d.touch(o)
}

// delRef removes ref from the set field f of o.
func (d *db) delRef(o *object, f, ref string) {
	a, _ := o.Rec[f].([]any)
	out := make([]any, 0, len(a))
	for _, e := range a {
		if e != ref {
			out = append(out, e)
		}
	}
	if len(out) != len(a) {
		o.Rec[f] = out
		d.touch(o)
	}
}

func newUUID() string {
	var u [16]byte
	rand.Read(u[:])
	u[6] = u[6]&0x0F | 0x40
	u[8] = u[8]&0x3F | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

func xapiTime(t time.Time) string { return t.UTC().Format(datetimeFormat) }
