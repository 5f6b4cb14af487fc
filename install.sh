#!/bin/sh
# install.sh [--uninstall [--purge]] [--force-hooks-path] [--bin-dir DIR] [REPO]
#
# Installs buildlock into the git repository REPO (default: the repository of the current
# directory), for all of its worktrees:
#   - builds the release binaries if they are missing or older than the sources;
#   - copies them to <git common dir>/buildlock/bin/;
#   - installs the pre-commit hook where git looks for it (`git rev-parse --git-path hooks`,
#     which honours core.hooksPath); a hook already there that is not buildlock's is kept and
#     chained: it moves to <common dir>/buildlock/chained/pre-commit and runs as the check
#     unless .buildlock.toml sets its own `check`;
#   - adds the local aliases `git commit-retry` and `git buildlock`;
#   - writes .buildlock.toml from the example when the work tree has none.
# --bin-dir DIR installs the binaries found in DIR instead of building them.
# Installing twice changes nothing. --uninstall removes only what was added and restores the
# previous hook byte for byte; coordination state stays unless --purge.
set -eu

say() { printf 'buildlock install: %s\n' "$*"; }
die() { printf 'buildlock install: error: %s\n' "$*" >&2; exit 1; }

src=$(cd "$(dirname "$0")" && pwd)
mode=install
purge=no
force_hooks_path=no
repo=
bin_dir=
expect_bin_dir=no
for arg in "$@"; do
    if [ "$expect_bin_dir" = yes ]; then bin_dir=$arg; expect_bin_dir=no; continue; fi
    case "$arg" in
        --bin-dir) expect_bin_dir=yes ;;
        --bin-dir=*) bin_dir=${arg#--bin-dir=} ;;
        --uninstall) mode=uninstall ;;
        --purge) purge=yes ;;
        --force-hooks-path) force_hooks_path=yes ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $arg (see --help)" ;;
        *) [ -z "$repo" ] || die "one repository at a time (got '$repo' and '$arg')"; repo=$arg ;;
    esac
done
[ "$expect_bin_dir" = no ] || die "--bin-dir needs a directory"
[ -n "$repo" ] || repo=.
[ -d "$repo" ] || die "$repo is not a directory"
command -v git >/dev/null 2>&1 || die "git is not installed"

git -C "$repo" rev-parse --git-dir >/dev/null 2>&1 || die "$repo is not inside a git repository"
if [ "$(git -C "$repo" rev-parse --is-bare-repository)" = true ]; then
    die "$repo is a bare repository without a work tree: run install.sh inside one of its worktrees (git worktree add …)"
fi
top=$(git -C "$repo" rev-parse --show-toplevel)
git_dir=$(git -C "$top" rev-parse --path-format=absolute --git-dir)
common=$(git -C "$top" rev-parse --path-format=absolute --git-common-dir)
hooks=$(git -C "$top" rev-parse --path-format=absolute --git-path hooks)
hooks_path=$(git -C "$top" config --get core.hooksPath || true)
home="$common/buildlock"
bin="$home/bin"
chained="$home/chained/pre-commit"
manifest="$home/install.manifest"
hook="$hooks/pre-commit"

# Is the file at $1 buildlock's hook? (our symlink, or our shim)
is_ours() {
    if [ -L "$1" ]; then
        [ "$(readlink "$1")" = "$bin/pre-commit" ]
    else
        [ -f "$1" ] && grep -q '^# buildlock-hook' "$1" 2>/dev/null
    fi
}

manifest_has() { [ -f "$manifest" ] && grep -qx "$1" "$manifest"; }

if [ "$mode" = uninstall ]; then
    [ -d "$home" ] || { say "buildlock is not installed in $top; nothing to do"; exit 0; }
    if is_ours "$hook"; then
        rm -f "$hook"
        say "removed the hook $hook"
        if [ -e "$chained" ] || [ -L "$chained" ]; then
            mv "$chained" "$hook"
            rmdir "$home/chained" 2>/dev/null || true
            say "restored the previous hook $hook"
        fi
    elif [ -e "$hook" ]; then
        say "left $hook alone: it is not buildlock's"
    fi
    for alias in commit-retry buildlock; do
        value=$(git -C "$top" config --local --get "alias.$alias" || true)
        case "$value" in
            *"$bin/"*) git -C "$top" config --local --unset "alias.$alias"; say "removed the alias git $alias" ;;
        esac
    done
    if manifest_has "wrote-config" && [ -f "$top/.buildlock.toml" ] && cmp -s "$top/.buildlock.toml" "$src/.buildlock.toml.example"; then
        rm -f "$top/.buildlock.toml"
        say "removed $top/.buildlock.toml (unchanged since install)"
    fi
    rm -rf "$bin"
    rm -f "$manifest"
    if [ "$purge" = yes ]; then
        rm -rf "$home"
        say "removed the coordination state $home"
    else
        say "kept the coordination state in $home (remove it with --uninstall --purge)"
    fi
    say "uninstalled"
    exit 0
fi

# Hook managers that own core.hooksPath.
case "$hooks_path" in
    *.husky*)
        if [ "$force_hooks_path" = no ]; then
            die "core.hooksPath is husky's ($hooks_path), and husky rewrites that folder on every install.
  Either call buildlock from your husky hook: put this line in .husky/pre-commit, with your checks
  moved into .buildlock.toml's 'check':
      exec \"\$(git rev-parse --git-common-dir)/buildlock/bin/pre-commit\"
  (then run install.sh again with --force-hooks-path to get the binaries and aliases),
  or rerun with --force-hooks-path to install into $hooks anyway."
        fi
        ;;
esac

# Everything that can fail is checked before anything is changed.
if [ -e "$hooks" ] && [ ! -d "$hooks" ]; then
    die "the hooks directory $hooks is not a directory"
fi
mkdir -p "$hooks" 2>/dev/null || die "cannot create the hooks directory $hooks"
probe="$hooks/.buildlock-probe.$$"
( : > "$probe" ) 2>/dev/null && rm -f "$probe" || die "the hooks directory $hooks is not writable"
# A hook manager that reinstalled its hook over ours (lefthook does on every npm install) put back
# the very hook we keep: ours goes back in place. A different one is the user's to sort out.
regenerated=no
if ! is_ours "$hook" && { [ -e "$hook" ] || [ -L "$hook" ]; } && { [ -e "$chained" ] || [ -L "$chained" ]; }; then
    if cmp -s "$hook" "$chained"; then
        regenerated=yes
    else
        die "$hook is not buildlock's, and a different hook is already kept at $chained; move one of them away first"
    fi
fi

# 1. Binaries: given, or built when missing or older than the sources.
target=${CARGO_TARGET_DIR:-$src/target}
case "$target" in /*) ;; *) target="$src/$target" ;; esac
release="$target/release"
need_build=no
if [ -n "$bin_dir" ]; then
    release=$(cd "$bin_dir" 2>/dev/null && pwd) || die "--bin-dir $bin_dir is not a directory"
    for b in pre-commit commit-retry buildlock; do
        [ -x "$release/$b" ] || die "$release/$b is missing: --bin-dir must hold pre-commit, commit-retry and buildlock"
    done
else
    for b in pre-commit commit-retry buildlock; do
        [ -x "$release/$b" ] || need_build=yes
    done
    if [ "$need_build" = no ] && [ -n "$(find "$src/Cargo.toml" "$src/Cargo.lock" "$src/src" "$src/crates" -newer "$release/pre-commit" -type f 2>/dev/null | head -n 1)" ]; then
        need_build=yes
    fi
fi
if [ "$need_build" = yes ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo is not installed, and the binaries need building: install Rust from https://rustup.rs, then run install.sh again"
    say "building the release binaries (cargo build --release --locked; a few minutes the first time)"
    (cd "$src" && cargo build --release --locked --quiet) || die "the build failed; see cargo's output above"
fi

mkdir -p "$bin" 2>/dev/null || die "cannot create $bin"
changed=no
for b in pre-commit commit-retry buildlock; do
    if ! cmp -s "$release/$b" "$bin/$b"; then
        cp "$release/$b" "$bin/.$b.tmp" && mv -f "$bin/.$b.tmp" "$bin/$b"
        changed=yes
    fi
done
[ "$changed" = yes ] && say "installed the binaries in $bin" || say "the binaries in $bin are up to date"
[ "$git_dir" = "$common" ] || say "run from a linked worktree: installing for the whole repository ($common), every worktree shares it"

# 2. The hook.
if is_ours "$hook"; then
    say "the hook $hook is already buildlock's"
else
    if [ "$regenerated" = yes ]; then
        rm -f "$hook"
        say "$hook was put back by a hook manager; it is the hook already kept at $chained, so buildlock's goes back in place"
    elif [ -e "$hook" ] || [ -L "$hook" ]; then
        mkdir -p "$home/chained"
        mv "$hook" "$chained"
        say "kept your existing hook: moved $hook to $chained; it runs as the check unless .buildlock.toml sets 'check'"
    fi
    if [ -n "$hooks_path" ]; then
        # A hooks folder the team may commit: the portable shim, not a machine-specific link.
        cp "$src/hooks/pre-commit" "$hook.tmp" && chmod 755 "$hook.tmp" && mv -f "$hook.tmp" "$hook"
        say "installed the hook shim $hook (core.hooksPath = $hooks_path)"
    else
        ln -s "$bin/pre-commit" "$hook"
        say "installed the hook $hook -> $bin/pre-commit"
    fi
fi

# 3. Aliases (local config, shared by every worktree).
set_alias() {
    want="!f() { cd \"\${GIT_PREFIX:-.}\" && exec \"$bin/$2\" \"\$@\"; }; f"
    if [ "$(git -C "$top" config --local --get "alias.$1" || true)" != "$want" ]; then
        git -C "$top" config --local "alias.$1" "$want"
        say "added the alias: git $1"
    fi
}
set_alias commit-retry commit-retry
set_alias buildlock buildlock

# 4. The configuration.
touch "$manifest"
if [ ! -e "$top/.buildlock.toml" ]; then
    cp "$src/.buildlock.toml.example" "$top/.buildlock.toml"
    manifest_has "wrote-config" || echo "wrote-config" >> "$manifest"
    if [ -e "$chained" ]; then
        say "wrote $top/.buildlock.toml from the example; your previous hook is the check until you set 'check'"
    else
        say "wrote $top/.buildlock.toml from the example: set 'check' to your build and test command"
    fi
fi

say "done. Next:"
say "  - agents commit with: git commit-retry -m '…'  (waits for another agent's fix, then retries)"
say "  - see who fixes what: git buildlock status;  check the setup: git buildlock doctor"
say "  - remove it again:    $src/install.sh --uninstall $top"
