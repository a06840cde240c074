# Shared set-up for ferry's scripts: sourced, not run.
# Installs what is missing: Go (from the Go module proxy's toolchain module
# when the machine has none, or one older than go.mod asks for) and Debian
# packages (apt-get).
set -euo pipefail

FERRY_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FERRY_CACHE=${FERRY_CACHE:-$HOME/.cache/ferry}
GO_WANT=1.26.8

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# have CMD: CMD is on PATH or in /usr/sbin or /sbin (often off a user's
# PATH); an absolute path names a file that must exist.
have() {
	case $1 in
	/*) [ -e "$1" ] ;;
	*) command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] ;;
	esac
}

apt_updated=
# ensure_pkgs CMD:PKG ... installs PKG when CMD is missing (see have).
ensure_pkgs() {
	local missing=() spec cmd pkg
	for spec in "$@"; do
		cmd=${spec%%:*} pkg=${spec#*:}
		have "$cmd" || missing+=("$pkg")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing ${missing[*]} (apt-get)"
	if [ -z "$apt_updated" ]; then
		as_root apt-get update -qq
		apt_updated=1
	fi
	DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

go_ok() {
	command -v go >/dev/null 2>&1 || return 1
	local v
	v=$(go env GOVERSION 2>/dev/null | sed 's/^go//') || return 1
	[ "$(printf '%s\n%s\n' "1.26" "$v" | sort -V | head -n1)" = "1.26" ]
}

ensure_go() {
	[ -x /usr/local/go/bin/go ] && export PATH=/usr/local/go/bin:$PATH
	[ -x "$FERRY_CACHE/go/bin/go" ] && export PATH=$FERRY_CACHE/go/bin:$PATH
	go_ok && return 0
	ensure_pkgs curl:curl unzip:unzip
	local proxy=${GOPROXY:-https://proxy.golang.org}
	proxy=${proxy%%,*}
	local arch
	case $(uname -m) in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
	local zip="$FERRY_CACHE/go$GO_WANT.zip" tmp="$FERRY_CACHE/go-unpack"
	log "installing Go $GO_WANT into $FERRY_CACHE/go (toolchain module from $proxy)"
	mkdir -p "$FERRY_CACHE"
	curl -fsSL -o "$zip.part" "$proxy/golang.org/toolchain/@v/v0.0.1-go$GO_WANT.linux-$arch.zip"
	mv "$zip.part" "$zip"
	rm -rf "$tmp" && mkdir -p "$tmp"
	unzip -q "$zip" -d "$tmp"
	rm -rf "$FERRY_CACHE/go"
	mv "$tmp/golang.org/toolchain@v0.0.1-go$GO_WANT.linux-$arch" "$FERRY_CACHE/go"
	chmod +x "$FERRY_CACHE/go/bin/"* "$FERRY_CACHE/go/pkg/tool/"*/* 2>/dev/null || true
	rm -rf "$tmp" "$zip"
	export PATH=$FERRY_CACHE/go/bin:$PATH
	go_ok || { echo "Go $GO_WANT installation failed" >&2; exit 1; }
}

build_ferry() {
	log "building ferry ($(go env GOVERSION), CGO_ENABLED=0)"
	mkdir -p "$FERRY_ROOT/bin"
	(cd "$FERRY_ROOT" && CGO_ENABLED=0 go build -trimpath \
		-ldflags "-s -w -X github.com/ferry-project/ferry/internal/cli.Version=$(git describe --always --dirty 2>/dev/null || echo dev)" \
		-o bin/ferry ./cmd/ferry)
}

# ensure_postgres installs PostgreSQL's server binaries (the scale-out tests
# start their own cluster in a temporary directory; no service is started).
ensure_postgres() {
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && return 0
	log "installing postgresql (apt-get)"
	if [ -z "$apt_updated" ]; then
		as_root apt-get update -qq
		apt_updated=1
	fi
	DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends postgresql >/dev/null
}

# ensure_versitygw builds the versitygw S3 gateway into the cache once
# (a few minutes on a cold module cache); the S3 tests start it themselves.
ensure_versitygw() {
	[ -x "$FERRY_CACHE/bin/versitygw" ] && return 0
	log "building versitygw v1.8.0 into $FERRY_CACHE/bin (once)"
	mkdir -p "$FERRY_CACHE/bin"
	(cd "$FERRY_CACHE" && GOBIN="$FERRY_CACHE/bin" GOFLAGS=-mod=mod go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)
}
