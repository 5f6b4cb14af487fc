#!/usr/bin/env bash
# Check buildlock for macOS and Windows from a Linux machine (docs/install.md, "Platforms").
#
#   scripts/cross-check.sh [STEP...]
#
# Steps (default: all, in this order):
#   setup    fetch what the other steps need, once: the std sources for -Zbuild-std (Debian's
#            rust-src, linked into the nightly toolchain's sysroot), mingw-w64 and Wine (apt),
#            stand-in darwin C compiler and archiver (generated in the cache dir)
#   probe    only say whether this machine can run the check (exit 0) or not (exit 77, and why)
#   macos    cargo clippy of the workspace for x86_64-apple-darwin and aarch64-apple-darwin,
#            all targets, warnings denied: it type-checks, nothing is linked or run
#   windows  build the workspace (binaries and core unit tests) for x86_64-win7-windows-gnu
#   wine     run `buildlock.exe --version` and the core's unit tests under Wine
#
# Exit codes: 0 every step passed; 1 a step failed; 2 usage; 77 this machine cannot set it up
# (no nightly toolchain, no apt, not root, the package mirror unreachable): the message says
# which. A check that fails once set up is 1 (or cargo's code), never 77.
#
# Everything fetched or generated lives under $CROSS_CHECK_CACHE (default:
# $CARGO_TARGET_DIR/cross-check, else target/cross-check), except the rust-src link, which goes
# where cargo looks for it: $(rustc +nightly --print sysroot)/lib/rustlib/src/rust. Each setup
# action says what it fetched; a second run fetches nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'cross-check: %s\n' "$*" >&2; }
cannot() {
    say "cannot run here: $*"
    exit 77
}

TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
CACHE=${CROSS_CHECK_CACHE:-$TARGET_DIR/cross-check}
# The Windows target Wine 8 can run: std for x86_64-pc-windows-gnu imports bcryptprimitives.dll,
# which Wine 8 lacks. The same cfg(windows) code serves both.
WIN_TARGET=x86_64-win7-windows-gnu
DARWIN_TARGETS=(x86_64-apple-darwin aarch64-apple-darwin)
BUILD_STD=(-Zbuild-std=std,panic_abort)

sysroot() { rustc +nightly --print sysroot; }

probe() {
    command -v rustup >/dev/null 2>&1 || cannot "no rustup (a nightly toolchain is needed for -Zbuild-std)"
    rustc +nightly --version >/dev/null 2>&1 || cannot "no nightly toolchain (rustup toolchain install nightly)"
    if ! src_present; then
        command -v apt-get >/dev/null 2>&1 || cannot "no apt-get to fetch Debian's rust-src"
        [ -n "$(debian_uri)" ] || cannot "no Debian mirror in /etc/apt/sources.list.d/ to fetch rust-src from"
    fi
    if ! command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || ! wine_bin >/dev/null; then
        command -v apt-get >/dev/null 2>&1 || cannot "no apt-get to install mingw-w64 and wine"
        [ "$(id -u)" = 0 ] || cannot "not root: apt-get install gcc-mingw-w64-x86-64 wine64 wine first"
    fi
}

src_present() { [ -f "$(sysroot)/lib/rustlib/src/rust/library/std/Cargo.toml" ]; }

# The URI of the Debian mirror this machine already uses (deb822 or one-line sources).
debian_uri() {
    local f
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
        [ -f "$f" ] || continue
        sed -n -e 's/^URIs: *\(.*debian\/\?\)$/\1/p' \
            -e 's/^deb \+\(\[[^]]*\] \+\)\?\([^ ]*debian\/\?\) .*/\2/p' "$f"
    done | grep -v -e security -e updates | head -1
}

wine_bin() {
    local w
    for w in /usr/lib/wine/wine64 "$(command -v wine64 2>/dev/null || true)"; do
        [ -n "$w" ] && [ -x "$w" ] && { echo "$w"; return 0; }
    done
    return 1
}

setup_src() {
    if src_present; then
        say "std sources: present at $(sysroot)/lib/rustlib/src/rust"
        return
    fi
    local uri apt=$CACHE/apt
    uri=$(debian_uri)
    [ -n "$uri" ] || cannot "no Debian mirror in /etc/apt/sources.list.d/"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/deb"
    # A private apt configuration: the system's sources and lists are not touched.
    printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s sid main\n' "$uri" >"$apt/sid.list"
    local opts=(-o "Dir::Etc::sourcelist=$apt/sid.list" -o Dir::Etc::sourceparts=-
        -o "Dir::State::lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
    say "fetching the package list of Debian sid from $uri (private apt config in $apt)"
    apt-get -qq "${opts[@]}" update >&2 ||
        cannot "apt-get update of Debian sid from $uri failed (see above)"
    (cd "$apt/deb" && rm -f rust-src_*.deb && apt-get -qq "${opts[@]}" download rust-src >&2) ||
        cannot "apt-get download rust-src from Debian sid failed (see above)"
    local deb
    deb=$(ls "$apt/deb"/rust-src_*.deb)
    say "fetched $(basename "$deb") ($(du -h "$deb" | cut -f1)) from Debian sid"
    rm -rf "$CACHE/rust-src"
    dpkg -x "$deb" "$CACHE/rust-src"
    local tree
    tree=$(ls -d "$CACHE"/rust-src/usr/src/rustc-* | head -1)
    [ -f "$tree/library/std/Cargo.toml" ] || { say "rust-src has no library/std in $tree"; exit 1; }
    mkdir -p "$(sysroot)/lib/rustlib/src"
    ln -sfn "$tree" "$(sysroot)/lib/rustlib/src/rust"
    say "linked $tree as $(sysroot)/lib/rustlib/src/rust (only the sources; the compiler stays $(rustc +nightly --version))"
}

setup_apt() {
    if command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 && wine_bin >/dev/null; then
        say "mingw-w64 and wine: present ($(x86_64-w64-mingw32-gcc -dumpversion), $("$(wine_bin)" --version 2>/dev/null))"
        return
    fi
    say "installing gcc-mingw-w64-x86-64, wine64 and wine with apt-get"
    apt-get update -qq >&2 || cannot "apt-get update failed (see above)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        gcc-mingw-w64-x86-64 wine64 wine >/dev/null ||
        cannot "apt-get install gcc-mingw-w64-x86-64 wine64 wine failed (see above)"
    say "installed mingw-w64 $(x86_64-w64-mingw32-gcc -dumpversion) and $("$(wine_bin)" --version 2>/dev/null)"
}

# For a type-check nothing is linked: the C that libgit2-sys and libz-sys build only has to
# leave object files and archives where their build scripts look for them.
setup_standins() {
    local bin=$CACHE/darwin-standins
    mkdir -p "$bin"
    cat >"$bin/cc.tmp" <<'EOF'
#!/bin/sh
# Stand-in darwin C compiler for `cargo check` (scripts/cross-check.sh): an empty object at -o.
out=
while [ $# -gt 0 ]; do
    case $1 in
        -o) out=$2; shift ;;
        -o*) out=${1#-o} ;;
    esac
    shift
done
[ -n "$out" ] && : >"$out"
exit 0
EOF
    cat >"$bin/ar.tmp" <<'EOF'
#!/bin/sh
# Stand-in darwin archiver for `cargo check` (scripts/cross-check.sh): an empty archive.
for a in "$@"; do
    case $a in *.a) printf '!<arch>\n' >"$a"; exit 0 ;; esac
done
exit 0
EOF
    local f
    for f in cc ar; do
        if cmp -s "$bin/$f.tmp" "$bin/$f" 2>/dev/null; then
            rm "$bin/$f.tmp"
        else
            mv "$bin/$f.tmp" "$bin/$f"
            chmod +x "$bin/$f"
            say "generated the stand-in darwin $f at $bin/$f"
        fi
    done
}

setup() {
    probe
    mkdir -p "$CACHE"
    setup_src
    setup_apt
    setup_standins
}

check_macos() {
    local bin=$CACHE/darwin-standins t
    [ -x "$bin/cc" ] || setup_standins
    for t in "${DARWIN_TARGETS[@]}"; do
        local T=${t//-/_}
        # clippy: the type-check and the lints for the price of a check.
        say "type-checking the workspace for $t with clippy (warnings denied)"
        env "CC_$T=$bin/cc" "AR_$T=$bin/ar" \
            cargo +nightly clippy --quiet "${BUILD_STD[@]}" --target "$t" --workspace --all-targets --locked -- -D warnings
    done
}

win_env() {
    local T=${WIN_TARGET//-/_}
    T=${T^^}
    export "CARGO_TARGET_${T}_LINKER=x86_64-w64-mingw32-gcc"
    export "CARGO_TARGET_${T}_RUNNER=$(wine_bin)"
    export CC_x86_64_win7_windows_gnu=x86_64-w64-mingw32-gcc AR_x86_64_win7_windows_gnu=x86_64-w64-mingw32-ar
    export WINEPREFIX=${WINEPREFIX:-$CACHE/wineprefix} WINEDEBUG=-all
    # Wine's first start creates the prefix; a display is not needed.
    export DISPLAY=
}

build_windows() {
    win_env
    say "building the workspace for $WIN_TARGET (warnings denied)"
    RUSTFLAGS="-Dwarnings" cargo +nightly build --quiet "${BUILD_STD[@]}" --target "$WIN_TARGET" --workspace --bins --locked
    RUSTFLAGS="-Dwarnings" cargo +nightly test --quiet "${BUILD_STD[@]}" --target "$WIN_TARGET" -p buildlock-core --lib --no-run --locked
}

run_wine() {
    win_env
    local exe=$TARGET_DIR/$WIN_TARGET/debug/buildlock.exe
    [ -f "$exe" ] || build_windows
    mkdir -p "$WINEPREFIX"
    say "buildlock.exe --version under $("$(wine_bin)" --version 2>/dev/null)"
    local out
    out=$("$(wine_bin)" "$exe" --version)
    printf '%s\n' "$out"
    case $out in buildlock\ *) ;; *) say "buildlock.exe --version answered '$out'"; exit 1 ;; esac
    # Skipped here, each with its reason (they run natively on the workflow's windows-latest):
    local skips=(
        store::remote:: # runs git: Wine has no Windows git, and cannot pipe the Linux one
        store::local::tests::a_directory_or_a_symlink_in_place # Wine makes no symlinks
    )
    say "the core's unit tests under Wine, skipping: ${skips[*]}"
    local args=() t
    for t in "${skips[@]}"; do args+=(--skip "$t"); done
    RUSTFLAGS="-Dwarnings" cargo +nightly test --quiet "${BUILD_STD[@]}" --target "$WIN_TARGET" -p buildlock-core --lib --locked -- "${args[@]}"
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(setup macos windows wine)
for step in "${steps[@]}"; do
    case $step in
        probe) probe; say "this machine can run the cross-check" ;;
        setup) setup ;;
        macos) check_macos ;;
        windows) build_windows ;;
        wine) run_wine ;;
        -h | --help) sed -n '2,20p' "$0" | sed 's/^# \?//'; exit 0 ;;
        *) say "unknown step '$step': use setup, probe, macos, windows or wine (see --help)"; exit 2 ;;
    esac
done
say "done: ${steps[*]}"
