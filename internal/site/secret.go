package site

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/ferry-project/ferry/internal/errs"
)

// Secret is a credential. It prints and logs as a redaction.
type Secret string

func (Secret) String() string               { return "[redacted]" }
func (Secret) GoString() string             { return `"[redacted]"` }
func (Secret) LogValue() slog.Value         { return slog.StringValue("[redacted]") }
func (Secret) MarshalText() ([]byte, error) { return []byte("[redacted]"), nil }

// Reveal returns the secret's value, for the one place that sends it.
func (s Secret) Reveal() string { return string(s) }

// KeyEnv is the environment variable that may hold the secret key.
const KeyEnv = "FERRY_SECRET_KEY"

// KeyFileName is the key generated in the data directory.
const KeyFileName = "secret.key"

// Key is the 32-byte AES-256 key that seals site credentials.
type Key [32]byte

// ParseKey reads a key written as 64 hex digits or as base64 of 32 bytes.
func ParseKey(s string) (Key, error) {
	var k Key
	s = strings.TrimSpace(s)
	var b []byte
	var err error
	if len(s) == 64 {
		b, err = hex.DecodeString(s)
	} else {
		b, err = base64.StdEncoding.DecodeString(s)
	}
	if err != nil || len(b) != 32 {
		return k, fmt.Errorf("secret key: want 64 hex digits or base64 of 32 bytes: %w", errs.ErrInvalidArgument)
	}
	copy(k[:], b)
	return k, nil
}

// KeySource says where LoadKey found the key.
type KeySource struct {
	Path      string // file, or "" when from the environment
	Env       bool
	Generated bool // a new key was written to Path
}

// LoadKey finds the secret key: keyFile if given, else envValue (the
// FERRY_SECRET_KEY variable) if set, else dataDir/secret.key, which is
// generated (mode 0600) when missing and dataDir is given.
func LoadKey(keyFile, envValue, dataDir string) (Key, KeySource, error) {
	if keyFile != "" {
		k, err := readKeyFile(keyFile)
		return k, KeySource{Path: keyFile}, err
	}
	if envValue != "" {
		k, err := ParseKey(envValue)
		if err != nil {
			return k, KeySource{Env: true}, fmt.Errorf("%s: %w", KeyEnv, err)
		}
		return k, KeySource{Env: true}, nil
	}
	if dataDir == "" {
		return Key{}, KeySource{}, fmt.Errorf("secret key: give --key-file or %s: %w", KeyEnv, errs.ErrInvalidArgument)
	}
	p := filepath.Join(dataDir, KeyFileName)
	k, err := readKeyFile(p)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return k, KeySource{Path: p}, err
	}
	if _, err := rand.Read(k[:]); err != nil {
		return k, KeySource{}, err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return k, KeySource{}, fmt.Errorf("secret key: %w", err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return k, KeySource{}, fmt.Errorf("secret key: %w", err)
	}
	if _, err := f.WriteString(hex.EncodeToString(k[:]) + "\n"); err != nil {
		f.Close()
		return k, KeySource{}, fmt.Errorf("secret key: %w", err)
	}
	if err := f.Close(); err != nil {
		return k, KeySource{}, fmt.Errorf("secret key: %w", err)
	}
	return k, KeySource{Path: p, Generated: true}, nil
}

func readKeyFile(p string) (Key, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return Key{}, fmt.Errorf("secret key: %w", err)
	}
	k, err := ParseKey(string(b))
	if err != nil {
		return k, fmt.Errorf("%s: %w", p, err)
	}
	return k, nil
}

// Sealer encrypts and authenticates credentials with AES-256-GCM.
type Sealer struct{ aead cipher.AEAD }

// NewSealer returns a Sealer under k.
func NewSealer(k Key) *Sealer {
	b, err := aes.NewCipher(k[:])
	if err != nil {
		panic(err) // 32-byte keys always work
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic(err)
	}
	return &Sealer{aead: g}
}

// sealVersion prefixes sealed data, so the scheme can change later.
const sealVersion = 1

// Seal encrypts plain, binding it to aad (the site's name: sealed
// credentials cannot be moved to another site). The result is
// version || nonce || ciphertext+tag.
func (s *Sealer) Seal(plain, aad []byte) []byte {
	out := make([]byte, 1+s.aead.NonceSize(), 1+s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	out[0] = sealVersion
	rand.Read(out[1:])
	return s.aead.Seal(out, out[1:], plain, aad)
}

// Open decrypts what Seal returned.
func (s *Sealer) Open(sealed, aad []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < 1+n+s.aead.Overhead() || sealed[0] != sealVersion {
		return nil, fmt.Errorf("sealed credentials: unknown format: %w", errs.ErrCorrupt)
	}
	plain, err := s.aead.Open(nil, sealed[1:1+n], sealed[1+n:], aad)
	if err != nil {
		return nil, fmt.Errorf("sealed credentials do not open (a different secret key?): %w", errs.ErrFailedPrecondition)
	}
	return plain, nil
}
