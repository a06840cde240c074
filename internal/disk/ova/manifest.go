package ova

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"
	"strings"

	"github.com/ferry-project/ferry/internal/errs"
)

// Digest algorithms, as manifests name them.
const (
	algSHA1   = "SHA1"
	algSHA256 = "SHA256"
	algSHA512 = "SHA512"
)

// maxManifestBytes bounds the manifest member; a line per member of at
// most maxMembers members fits with room to spare.
const maxManifestBytes = 4 << 20

// newHash returns a hash for alg, which must be one of the alg constants.
func newHash(alg string) hash.Hash {
	switch alg {
	case algSHA1:
		return sha1.New()
	case algSHA512:
		return sha512.New()
	}
	return sha256.New()
}

// digestLen is the byte length of alg's digest.
func digestLen(alg string) int {
	switch alg {
	case algSHA1:
		return sha1.Size
	case algSHA512:
		return sha512.Size
	}
	return sha256.Size
}

// normAlg maps the spellings writers use to an alg constant, or "".
func normAlg(s string) string {
	switch strings.ToUpper(strings.TrimSpace(s)) {
	case "SHA1", "SHA-1":
		return algSHA1
	case "SHA256", "SHA-256", "SHA2-256":
		return algSHA256
	case "SHA512", "SHA-512", "SHA2-512":
		return algSHA512
	}
	return ""
}

// mfEntry is one manifest line.
type mfEntry struct {
	alg string
	sum []byte
}

// manifest is a parsed .mf member.
type manifest struct {
	entries map[string]mfEntry // by member name
	order   []string           // member names as listed
}

// algs returns the algorithms the manifest uses, in first-use order.
func (m *manifest) algs() []string {
	var out []string
	for _, n := range m.order {
		a := m.entries[n].alg
		if !contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// parseManifest parses manifest lines "ALG(name)= hex", also accepting
// spaces around the parentheses and the equals sign ("SHA256 (name) =
// hex", as OpenSSL and VirtualBox write them). name is used in messages.
func parseManifest(name string, b []byte) (*manifest, error) {
	m := &manifest{entries: map[string]mfEntry{}}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(strings.TrimSuffix(line, "\r"))
		if line == "" {
			continue
		}
		bad := func(why string) error {
			return fmt.Errorf("ova %s: line %d: %s: %w", name, i+1, why, errs.ErrCorrupt)
		}
		open := strings.IndexByte(line, '(')
		closing := strings.LastIndexByte(line, ')')
		if open < 0 || closing < open {
			return nil, bad("not of the form ALG(file)= digest")
		}
		rest := strings.TrimSpace(line[closing+1:])
		if !strings.HasPrefix(rest, "=") {
			return nil, bad("no '=' after the file name")
		}
		algName := line[:open]
		alg := normAlg(algName)
		if alg == "" {
			return nil, fmt.Errorf("ova %s: line %d: digest algorithm %q: %w", name, i+1, strings.TrimSpace(algName), errs.ErrUnimplemented)
		}
		file := cleanName(line[open+1 : closing])
		if file == "" {
			return nil, bad("empty file name")
		}
		sum, err := hex.DecodeString(strings.TrimSpace(rest[1:]))
		if err != nil || len(sum) != digestLen(alg) {
			return nil, bad(fmt.Sprintf("%s digest of %s is not %d hex digits", alg, file, 2*digestLen(alg)))
		}
		if _, dup := m.entries[file]; dup {
			return nil, bad(fmt.Sprintf("%s is listed twice", file))
		}
		m.entries[file] = mfEntry{alg: alg, sum: sum}
		m.order = append(m.order, file)
	}
	return m, nil
}

// manifestLine formats one line the way ovftool does: "SHA256(name)= hex".
func manifestLine(alg, name string, sum []byte) string {
	return alg + "(" + name + ")= " + hex.EncodeToString(sum) + "\n"
}

// digests computes several algorithms at once over a member.
type digests struct {
	algs []string
	hs   []hash.Hash
}

func newDigests(algs ...string) *digests {
	d := &digests{algs: algs}
	for _, a := range algs {
		d.hs = append(d.hs, newHash(a))
	}
	return d
}

func (d *digests) Write(p []byte) (int, error) {
	for _, h := range d.hs {
		h.Write(p)
	}
	return len(p), nil
}

// sum returns the digest for alg, or nil when it was not computed.
func (d *digests) sum(alg string) []byte {
	for i, a := range d.algs {
		if a == alg {
			return d.hs[i].Sum(nil)
		}
	}
	return nil
}

// check compares a member's digests with its manifest entry. display names
// the member in messages.
func (m *manifest) check(mfName, member, display string, d *digests) error {
	e, ok := m.entries[member]
	if !ok {
		return fmt.Errorf("ova %s: member %s is not in the manifest %s: %w", display, member, mfName, errs.ErrCorrupt)
	}
	got := d.sum(e.alg)
	if got == nil {
		return fmt.Errorf("ova %s: member %s: the manifest's %s digest came after the member, which was hashed with %s only: %w",
			display, member, e.alg, strings.Join(d.algs, ", "), errs.ErrUnimplemented)
	}
	if !bytes.Equal(got, e.sum) {
		return fmt.Errorf("ova %s: member %s: %s digest %x does not match the manifest's %x: %w",
			display, member, e.alg, got, e.sum, errs.ErrCorrupt)
	}
	return nil
}
