package main
import (
_ "github.com/klauspost/compress/flate"
_ "github.com/klauspost/compress/zstd"
_ "github.com/cespare/xxhash/v2"
_ "github.com/spf13/cobra"
_ "golang.org/x/sync/errgroup"
_ "golang.org/x/term"
_ "golang.org/x/sys/unix"
)
