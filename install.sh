#!/bin/sh
# install.sh: install buildlock into a git repository, or take it out again (`--help` says how).
#
# Why it is built the way it is:
# - Everything that can fail is checked before anything is changed, so a refused run leaves the
#   repository exactly as it was.
# - The hook git runs is a small text file whose `#!` line is the installed binary: a hook
#   manager (`pre-commit install`, `lefthook install`) reads the hook file before it replaces it,
#   and a link to the 2.6 MB binary is not something it can read; a `#!/bin/sh` wrapper would
#   cost one more exec on every commit.
# - A committed hooks folder (core.hooksPath) is shared by clones that have buildlock and clones
#   that do not. The team's hook stays committed, as `pre-commit.chained`, and the committed shim
#   (hooks/pre-commit) runs buildlock where it is installed and the team's hook everywhere else.
# - Hook managers regenerate their hook over ours; running install.sh again puts ours back in
#   front and chains their newest hook. Uninstall restores what was there, and leaves no copy or
#   link of ours behind, including the `.legacy` / `.old` names under which managers keep it.
# - Git for Windows: it runs in Git Bash (git's own sh, which also runs the hooks). The binaries
#   are `.exe` files, paths may come with backslashes and a drive letter, and with
#   core.autocrlf the files checked out from this repository (hooks/pre-commit) have CRLF line
#   ends, which a `#!/bin/sh` line must not: they are copied and compared without the CRs.
set -eu

# Git for Windows (Git Bash, MSYS2, Cygwin): `.exe` binaries; the hook is always the sh form.
case $(uname -s) in
    MINGW* | MSYS* | CYGWIN*) windows=yes exe=.exe ;;
    *) windows=no exe= ;;
esac
# A path as sh on every platform takes it: backslashes (C:\src\repo) become slashes.
fwd() { printf '%s' "$1" | tr '\\' /; }
# Whether $1 is absolute: /x, or C:/x on Windows.
is_absolute() {
    case $1 in /* | [A-Za-z]:/*) return 0 ;; *) return 1 ;; esac
}
# The file $1 without carriage returns (checked out with CRLF by core.autocrlf), to $2.
copy_lf() { tr -d '\r' <"$1" >"$2"; }
same_lf() { [ -f "$1" ] && [ "$(tr -d '\r' <"$1")" = "$(tr -d '\r' <"$2")" ]; }

usage() {
    cat <<'EOF'
Usage: install.sh [--bin-dir DIR] [--force-hooks-path] [REPO]
       install.sh --uninstall [--purge] [REPO]

Installs buildlock into the git repository REPO (default: the repository of the current
directory), for all of its worktrees:
  - builds the release binaries with cargo when they are missing or older than the sources
    (or takes them from --bin-dir), and copies them to <git common dir>/buildlock/bin/;
  - installs the pre-commit hook where git looks for it (honouring core.hooksPath). A hook that
    is already there is kept and runs as the check unless .buildlock.toml sets `check`;
  - adds the local aliases `git commit-retry` and `git buildlock`;
  - writes .buildlock.toml from the example when the work tree has none.
Installing twice changes nothing; installing again after a hook manager (pre-commit, lefthook)
reinstalled its hook puts buildlock's back in front of it.

Options:
  --bin-dir DIR        install the binaries pre-commit, commit-retry and buildlock found in DIR
                       instead of building them
  --force-hooks-path   install into a core.hooksPath folder that husky owns
  --uninstall          remove what install.sh added and restore the previous hook byte for byte;
                       the coordination state (<git common dir>/buildlock) stays
  --purge              with --uninstall: remove the coordination state too
  -h, --help           print this help and exit
  --version            print the version and exit

Examples:
  ./install.sh ~/src/your-repo
  ./install.sh --uninstall --purge ~/src/your-repo
EOF
}

say() { printf 'buildlock install: %s\n' "$*"; }
die() {
    printf 'buildlock install: error: %s\n' "$*" >&2
    exit 1
}
# The word $1 quoted for sh, so that a printed command can be pasted as it is (spaces, quotes).
shq() {
    case $1 in
        '' | *[!A-Za-z0-9_./:@%+=,-]*) printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")" ;;
        *) printf '%s' "$1" ;;
    esac
}

src=$(cd "$(dirname "$0")" && pwd)
mode=install
purge=no
force_hooks_path=no
repo=
bin_dir=
expect_bin_dir=no
for arg in "$@"; do
    if [ "$expect_bin_dir" = yes ]; then
        bin_dir=$arg
        expect_bin_dir=no
        continue
    fi
    case "$arg" in
        --bin-dir) expect_bin_dir=yes ;;
        --bin-dir=*) bin_dir=${arg#--bin-dir=} ;;
        --uninstall) mode=uninstall ;;
        --purge) purge=yes ;;
        --force-hooks-path) force_hooks_path=yes ;;
        -h | --help)
            usage
            exit 0
            ;;
        --version)
            version=$(sed -n 's/^version = "\([^"]*\)".*/\1/p' "$src/Cargo.toml" 2>/dev/null | head -n 1)
            printf 'buildlock install.sh %s\n' "${version:-(unknown version)}"
            exit 0
            ;;
        -*) die "unknown option $arg (see install.sh --help)" ;;
        *)
            [ -z "$repo" ] || die "one repository at a time (got $(shq "$repo") and $(shq "$arg"))"
            repo=$arg
            ;;
    esac
done
[ "$expect_bin_dir" = no ] || die "--bin-dir needs a directory"
if [ "$purge" = yes ] && [ "$mode" != uninstall ]; then
    die "--purge only goes with --uninstall (install.sh --uninstall --purge removes buildlock and its coordination state); nothing was changed"
fi
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
# pre-merge-commit: git runs it (instead of pre-commit) for a merge it makes without a conflict.
mhook="$hooks/pre-merge-commit"
mkeep="$home/chained/pre-merge-commit"
this="sh $(shq "$src/install.sh")"
# husky (v9: core.hooksPath = .husky/_, a folder that git ignores and that husky rewrites on every
# `npm install`, in each worktree apart). Its runner `h` runs `.husky/<name>`, <name> being the
# name it is run as: it must be run as `pre-commit`, never under another name.
husky=no
case "$hooks_path" in
    *.husky*) if [ "$force_hooks_path" = yes ]; then husky=force; else husky=line; fi ;;
esac
husky_dir=${hooks%/*}
# The line that calls buildlock from .husky/pre-commit: skipped where buildlock is not installed
# (a teammate's clone, after uninstall), and when husky runs the file as buildlock's own check.
# shellcheck disable=SC2016 # the line is written as it is, for .husky/pre-commit
husky_line='b="$(git rev-parse --git-common-dir)/buildlock/bin/pre-commit"; [ -n "${BUILDLOCK_HUSKY_CHECK-}" ] || [ ! -x "$b" ] || exec "$b" "$@"'

# With core.hooksPath the hooks folder is usually committed and shared by every clone: the hook
# there is the committed shim, and the team's own hook stays beside it as pre-commit.chained. The
# check runs at the top of the work tree being committed, so a relative hooks path finds the
# version of the team's hook that this worktree has checked out.
if [ -n "$hooks_path" ]; then
    committed=yes
    team="$hooks/pre-commit.chained"
    case $hooks_path in
        /* | '~'*) hooks_ref=$hooks ;;
        *) hooks_ref="./${hooks_path%/}" ;;
    esac
    team_ref="$hooks_ref/pre-commit.chained"
    keep=$team
else
    committed=no
    keep=$chained
fi

exists() { [ -e "$1" ] || [ -L "$1" ]; }

# Is the file at $1 buildlock's hook: this clone's script, the committed shim, or the link to the
# binary that earlier versions installed (still recognised, for upgrades and uninstall)?
is_ours() {
    if [ -L "$1" ]; then
        [ "$(readlink "$1")" = "$bin/pre-commit" ]
    else
        [ -f "$1" ] && grep -q '^# buildlock-hook' "$1" 2>/dev/null
    fi
}

# The script that runs the check in place of the team's committed hook (committed folders only).
is_dispatcher() { [ -f "$1" ] && [ ! -L "$1" ] && grep -q '^# buildlock-chained' "$1" 2>/dev/null; }

# The hook manager that generated the hook file $1, if any.
manager_of() {
    if [ ! -f "$1" ]; then
        :
    elif grep -q 'File generated by pre-commit' "$1" 2>/dev/null; then
        echo pre-commit
    elif grep -qE 'call_lefthook|LEFTHOOK' "$1" 2>/dev/null; then
        echo lefthook
    elif grep -q 'husky' "$1" 2>/dev/null; then
        echo husky
    fi
}

# Who generated the hook file $1, for messages.
who() {
    m=$(manager_of "$1")
    printf '%s' "${m:-a hook manager}"
}

# Are $1 and $2 the same hook: the same bytes, or two generations of one hook manager's hook?
same_hook() {
    cmp -s "$1" "$2" && return 0
    m=$(manager_of "$1")
    [ -n "$m" ] && [ "$m" = "$(manager_of "$2")" ]
}

# The hook this clone gets in .git/hooks (or wherever git looks without core.hooksPath): a small
# text file whose interpreter is the binary itself, so the kernel starts the binary directly (a
# `#!/bin/sh` wrapper costs one more exec, about 0.6 ms a commit). A shebang line cannot hold
# whitespace and is cut short on older kernels, so such paths get the `sh` form instead.
hook_text() {
    case $bin in
        *[[:space:]]*) shebang=no ;;
        *) if [ ${#bin} -le 96 ] && [ "$windows" = no ]; then shebang=yes; else shebang=no; fi ;;
    esac
    if [ "$shebang" = yes ]; then
        printf '#!%s --hook-script\n' "$bin/pre-commit"
        printf '# buildlock-hook: written by buildlock'\''s install.sh for this clone (install.sh --uninstall removes it).\n'
        printf '# The line above runs buildlock'\''s binary on this file: as cheap as the binary itself, and a\n'
        printf '# small text file that hook managers (pre-commit, lefthook) can read. Run as `sh <this file>`:\n'
        printf 'exec %s "$@"\n' "$(shq "$bin/pre-commit")"
    else
        printf '#!/bin/sh\n'
        printf '# buildlock-hook: written by buildlock'\''s install.sh for this clone (install.sh --uninstall removes it).\n'
        printf '# A small script that hook managers (pre-commit, lefthook) can read. Run as the pre-commit\n'
        printf '# framework'\''s legacy hook, the check we chain may be that framework again: its recursion\n'
        printf '# guard must not fire there.\n'
        printf 'unset PRE_COMMIT_RUNNING_LEGACY\n'
        printf 'exec %s "$@"\n' "$(shq "$bin/pre-commit")"
    fi
}

dispatcher_text() {
    if [ "$husky" != no ]; then
        # shellcheck disable=SC2016 # the script is written as it is
        printf '#!/bin/sh\n'
        printf '# buildlock-chained: written by buildlock'\''s install.sh. husky: the team'\''s .husky/pre-commit is the\n'
        printf '# check, run by husky'\''s runner under the name it picks the script by (pre-commit), from the top\n'
        printf '# of the work tree being committed. BUILDLOCK_HUSKY_CHECK tells buildlock'\''s line in that file\n'
        printf '# not to call buildlock again.\n'
        printf 'dir=%s\n' "$(shq "$hooks_ref")"
        printf 'BUILDLOCK_HUSKY_CHECK=1\n'
        printf 'export BUILDLOCK_HUSKY_CHECK\n'
        printf '# shellcheck disable=SC2016\n'
        # shellcheck disable=SC2016
        printf 'if [ -f "$dir/h" ]; then exec sh -c '\''. "${0%%/*}/h"'\'' "$dir/pre-commit" "$@"; fi\n'
        printf '# No runner in this worktree (husky not installed here: npm install): what it would run.\n'
        # shellcheck disable=SC2016
        printf 'if [ -f "${dir%%/*}/pre-commit" ]; then PATH="node_modules/.bin:$PATH"; export PATH; exec sh -e "${dir%%/*}/pre-commit" "$@"; fi\n'
        printf 'exit 0\n'
        return
    fi
    printf '#!/bin/sh\n'
    printf '# buildlock-chained: written by buildlock'\''s install.sh. The hooks folder (core.hooksPath) keeps\n'
    printf '# the team'\''s own hook as pre-commit.chained; this runs it as the check, from the top of the work\n'
    printf '# tree being committed, so that each worktree runs the version it has checked out.\n'
    printf 'team=%s\n' "$(shq "$team_ref")"
    printf 'if [ -x "$team" ]; then exec "$team" "$@"; fi\n'
    printf '[ ! -e "$team" ] || echo "buildlock: $team is not executable, so it does not run (git would ignore it too)" >&2\n'
    printf 'exit 0\n'
}

# Is the file at $1 exactly the hook this install.sh writes?
is_current() {
    [ -f "$1" ] && [ ! -L "$1" ] || return 1
    if [ "$committed" = yes ]; then
        same_lf "$1" "$src/hooks/pre-commit"
    else
        [ "$(tr -d '\r' <"$1")" = "$(hook_text)" ]
    fi
}

# Is the file at $1 one that git ignores (husky's .husky/_ ignores itself): nothing there to commit.
ignored() { git -C "$top" check-ignore -q -- "$1" 2>/dev/null; }

# The text of the pre-merge-commit hook in this clone's hooks folder: the pre-commit hook's, or,
# where a pre-merge-commit hook was there before, a script that runs buildlock then that hook.
merge_hook_text() {
    if exists "$mkeep"; then
        printf '#!/bin/sh\n'
        printf '# buildlock-hook: written by buildlock'\''s install.sh for this clone (install.sh --uninstall removes it).\n'
        printf '# git runs it for a merge made without a conflict: buildlock'\''s check, coordinated as for a\n'
        printf '# commit, then the pre-merge-commit hook that was here before.\n'
        printf 'unset PRE_COMMIT_RUNNING_LEGACY\n'
        printf '%s "$@" || exit\n' "$(shq "$bin/pre-commit")"
        printf 'exec %s "$@"\n' "$(shq "$mkeep")"
    else
        hook_text
    fi
}

# The line from .husky/pre-commit that calls buildlock, if there is one (its number: its text).
husky_calls() { [ -f "$husky_dir/$1" ] && grep -n 'buildlock/bin/pre-commit' "$husky_dir/$1" 2>/dev/null; }

manifest_has() { [ -f "$manifest" ] && grep -qx "$1" "$manifest"; }
manifest_add() { manifest_has "$1" || echo "$1" >>"$manifest"; }

# Where the hook managers keep the hook they replaced: the pre-commit framework runs
# `pre-commit.legacy` before its own hooks; lefthook keeps `pre-commit.old` and runs nothing of it.
backups="$hook.legacy $hook.old"

if [ "$mode" = uninstall ]; then
    [ -d "$home" ] || {
        say "buildlock is not installed in $top; nothing to do"
        exit 0
    }
    restored=no
    if is_ours "$hook"; then
        if [ "$committed" = yes ] && ! manifest_has wrote-shim && { ! exists "$chained" || is_dispatcher "$chained"; }; then
            # The shim came with the repository, not from this clone's install: it is the team's,
            # and it works without buildlock.
            say "left the committed shim $hook in place: it is your team's, and without buildlock it runs $team"
        else
            rm -f "$hook"
            say "removed the hook $hook"
            if [ "$committed" = yes ] && manifest_has wrote-shim && exists "$team"; then
                mv "$team" "$hook"
                restored=yes
                say "restored your hook $hook (it was kept as $team)"
            elif exists "$chained" && ! is_dispatcher "$chained"; then
                mv "$chained" "$hook"
                restored=yes
                say "restored the previous hook $hook"
            fi
            if [ "$committed" = yes ] && ignored "$hook"; then
                say "the hooks folder $hooks is ignored by git (husky's): nothing to commit"
            elif [ "$committed" = yes ]; then
                case "$hooks/" in
                    "$top/"*)
                        rel=${hooks#"$top/"}
                        say "the hooks folder is part of the work tree: commit this change to take buildlock out for the whole team:"
                        say "    git -C $(shq "$top") add -A -- $(shq "$rel") && git -C $(shq "$top") commit -m 'Hooks: remove the buildlock shim' -- $(shq "$rel")"
                        ;;
                esac
            fi
        fi
    elif exists "$hook"; then
        if [ "$committed" = no ] && exists "$chained" && same_hook "$hook" "$chained"; then
            # A hook manager had put its hook back in front of ours: it is the hook we kept.
            rm -f "$chained"
            restored=yes
            say "$hook is $(who "$hook")'s own hook again (it had been reinstalled over buildlock's); removed buildlock's copy of it"
        else
            say "left $hook alone: it is not buildlock's"
        fi
    fi
    # Managers keep our hook under another name; with the binaries gone it would dangle. Where the
    # previous hook is still kept, it goes back under that name, where the manager expects it.
    for b in $backups; do
        if is_ours "$b"; then
            if [ "$committed" = no ] && [ "$restored" = no ] && exists "$chained" && ! is_dispatcher "$chained"; then
                mv "$chained" "$b"
                restored=yes
                say "restored the previous hook as $b, where the hook manager runs it from"
            else
                rm -f "$b"
                say "removed $b (buildlock's hook, as a hook manager had kept it)"
            fi
        fi
    done
    if is_ours "$mhook"; then
        if [ "$committed" = yes ] && ! manifest_has wrote-merge-shim; then
            say "left the committed shim $mhook in place: it is your team's, and without buildlock it runs nothing of buildlock's"
        else
            rm -f "$mhook"
            say "removed the hook $mhook"
            if [ "$committed" = no ] && exists "$mkeep"; then
                mv "$mkeep" "$mhook"
                say "restored the previous hook $mhook"
            fi
        fi
    fi
    if [ "$husky" != no ]; then
        for name in pre-commit pre-merge-commit; do
            if found=$(husky_calls "$name"); then
                say "$husky_dir/$name still calls buildlock (line ${found%%:*}); without buildlock that line is skipped and the rest of the file runs, so commits keep working. To take it out for the whole team, delete the line and commit:"
                say "    ${found#*:}"
            fi
        done
    fi
    if is_dispatcher "$chained"; then rm -f "$chained"; fi
    rmdir "$home/chained" 2>/dev/null || true
    for alias in commit-retry buildlock; do
        value=$(git -C "$top" config --local --get "alias.$alias" || true)
        qbin=$(printf '%s' "$bin" | sed "s/'/'\\\\''/g")
        case "$value" in
            *"$bin/"* | *"$qbin/"*)
                git -C "$top" config --local --unset "alias.$alias"
                say "removed the alias git $alias"
                ;;
        esac
    done
    if manifest_has "wrote-config" && [ -f "$top/.buildlock.toml" ] && cmp -s "$top/.buildlock.toml" "$src/.buildlock.toml.example"; then
        if git -C "$top" ls-files --error-unmatch -- .buildlock.toml >/dev/null 2>&1; then
            # Committed: removing it is a change for the whole team, not for this clone's uninstall.
            say "kept $top/.buildlock.toml: it is committed (to remove it: git rm .buildlock.toml, then commit)"
        else
            rm -f "$top/.buildlock.toml"
            say "removed $top/.buildlock.toml (unchanged since install)"
        fi
    fi
    rm -rf "$bin"
    rm -f "$manifest"
    if [ "$purge" = yes ]; then
        rm -rf "$home"
        say "removed the coordination state $home"
    else
        say "kept the coordination state in $home; to remove it too: $this --uninstall --purge $(shq "$top")"
    fi
    say "uninstalled"
    exit 0
fi

# Everything that can fail is checked before anything is changed.
if [ "$husky" = line ]; then
    # husky keeps its hooks folder: git runs husky's hook, and .husky/pre-commit calls buildlock.
    plan=husky
elif [ -e "$hooks" ] && [ ! -d "$hooks" ]; then
    die "the hooks directory $hooks is not a directory"
fi
if [ "$husky" != line ]; then
    mkdir -p "$hooks" 2>/dev/null || die "cannot create the hooks directory $hooks"
    probe="$hooks/.buildlock-probe.$$"
    (: >"$probe") 2>/dev/null && rm -f "$probe" || die "the hooks directory $hooks is not writable"
fi

# What to do with the hook that is there. A hook manager that reinstalled its hook over ours
# (lefthook on every `npm install`, the pre-commit framework on `pre-commit install`) put back the
# hook we keep, maybe a newer generation of it: ours goes back in front, and the newest copy is the
# one kept. A different foreign hook is the user's to sort out.
if [ "$husky" = line ]; then
    :
elif is_ours "$hook"; then
    plan=ours
elif exists "$hook"; then
    if exists "$keep"; then
        same_hook "$hook" "$keep" ||
            die "$hook is not buildlock's, and a different hook is already kept at $keep: move one of them away, then run install.sh again"
        plan=regenerated
    else
        plan=chain
    fi
else
    plan=fresh
fi
# pre-merge-commit: kept and chained as pre-commit is, in this clone's hooks folder; in a committed
# folder the shim goes in only where there is none (a team's hook there is left as it is).
mplan=none
if [ "$husky" = line ]; then
    :
elif is_ours "$mhook"; then
    mplan=ours
elif ! exists "$mhook"; then
    mplan=fresh
elif [ "$committed" = no ]; then
    if exists "$mkeep"; then
        same_hook "$mhook" "$mkeep" ||
            die "$mhook is not buildlock's, and a different hook is already kept at $mkeep: move one of them away, then run install.sh again"
        mplan=regenerated
    else
        mplan=chain
    fi
fi
# The committed-folder layout of earlier versions moved the team's hook out of the folder, into
# this clone's $chained: it goes back into the folder, where every clone can run it.
bring_back=no
if [ "$committed" = yes ] && [ "$husky" != line ] && exists "$chained" && ! is_dispatcher "$chained"; then
    if [ "$plan" = ours ] && ! exists "$team"; then
        bring_back=yes
    elif [ "$plan" = ours ] && cmp -s "$chained" "$team"; then
        bring_back=dup
    else
        die "$chained holds a hook kept by an earlier install of buildlock, and $hook is set up differently now: move $chained away, then run install.sh again"
    fi
fi

# 1. Binaries: given, or built when missing or older than the sources.
target=$(fwd "${CARGO_TARGET_DIR:-$src/target}")
is_absolute "$target" || target="$src/$target"
release="$target/release"
need_build=no
if [ -n "$bin_dir" ]; then
    release=$(cd "$(fwd "$bin_dir")" 2>/dev/null && pwd) || die "--bin-dir $bin_dir is not a directory"
    for b in pre-commit commit-retry buildlock; do
        [ -x "$release/$b$exe" ] || die "$release/$b$exe is missing: --bin-dir must hold pre-commit$exe, commit-retry$exe and buildlock$exe"
    done
else
    for b in pre-commit commit-retry buildlock; do
        [ -x "$release/$b$exe" ] || need_build=yes
    done
    if [ "$need_build" = no ] && [ -n "$(find "$src/Cargo.toml" "$src/Cargo.lock" "$src/src" "$src/crates" -newer "$release/pre-commit$exe" -type f 2>/dev/null | head -n 1)" ]; then
        need_build=yes
    fi
fi
if [ "$need_build" = yes ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo is not installed, and the binaries need building: install Rust from https://rustup.rs, then run install.sh again"
    say "building the release binaries with cargo build --release --locked (a few minutes the first time)"
    (cd "$src" && cargo build --release --locked) || die "the build failed; see cargo's output above"
fi
# The hook and commit-retry run on every commit, so they are built to start fast: linked statically
# and at a fixed address (nothing to load or relocate at start). Against musl where its Rust target
# and C compiler are installed (`rustup target add $(uname -m)-unknown-linux-musl`, and musl-gcc:
# Debian's musl-tools): glibc's start-up asks the CPU for its cache sizes with dozens of `cpuid`
# instructions, each a trap to the hypervisor on a virtual machine (about a fifth of the hook's
# own time on one); musl's does not. Else against glibc's libc.a. Also when the release binaries
# were built by hand (`cargo build --release`). Optional: they stay as built without.
hot="$release" # where pre-commit and commit-retry are installed from
if [ -z "$bin_dir" ] && [ "$(uname -s)" = Linux ] && command -v cargo >/dev/null 2>&1; then
    musl="$(uname -m)-unknown-linux-musl"
    musl_cc=$(command -v musl-gcc || command -v "$(uname -m)-linux-musl-gcc" || true)
    if [ -n "$musl_cc" ] && command -v rustup >/dev/null 2>&1 &&
        rustup target list --installed 2>/dev/null | grep -qx "$musl"; then
        say "building pre-commit and commit-retry against musl (they start faster; a few minutes the first time)"
        hot="$target/$musl/release"
        for b in pre-commit commit-retry; do
            (cd "$src" && env "CC_$(printf '%s' "$musl" | tr - _)=$musl_cc" \
                cargo rustc --release --locked --quiet --target "$musl" --bin "$b" -- -C relocation-model=static) >/dev/null 2>&1 ||
                hot="$release"
        done
        [ "$hot" = "$release" ] && say "note: the musl build failed; building against glibc instead"
    fi
    if [ "$hot" = "$release" ] && command -v ldd >/dev/null 2>&1; then
        for b in pre-commit commit-retry; do
            ldd "$release/$b" >/dev/null 2>&1 || continue
            (cd "$src" && cargo rustc --release --locked --quiet --bin "$b" -- -C target-feature=+crt-static -C relocation-model=static) >/dev/null 2>&1 ||
                say "note: $b stays dynamically linked (no static C library here); it works the same"
        done
    fi
fi

mkdir -p "$bin" 2>/dev/null || die "cannot create $bin"
changed=no
for b in pre-commit commit-retry buildlock; do
    from="$release"
    [ "$b" = buildlock ] || from="$hot"
    if ! cmp -s "$from/$b$exe" "$bin/$b$exe"; then
        cp "$from/$b$exe" "$bin/.$b.tmp" && mv -f "$bin/.$b.tmp" "$bin/$b$exe"
        changed=yes
    fi
done
[ "$changed" = yes ] && say "installed the binaries in $bin" || say "the binaries in $bin are up to date"
[ "$git_dir" = "$common" ] || say "run from a linked worktree: installing for the whole repository ($common), every worktree shares it"
touch "$manifest"

# 2. The hook.
write_hook() {
    if [ "$committed" = yes ]; then
        copy_lf "$src/hooks/pre-commit" "$hook.tmp"
    else
        hook_text >"$hook.tmp"
    fi
    chmod 755 "$hook.tmp" && mv -f "$hook.tmp" "$hook"
}
hook_changed=no
case $plan in
    ours)
        if is_current "$hook"; then
            say "the hook $hook is already buildlock's"
        else
            rm -f "$hook"
            write_hook
            hook_changed=yes
            say "upgraded buildlock's hook $hook to this version's (a small script that hook managers can read)"
        fi
        ;;
    regenerated)
        mv -f "$hook" "$keep"
        write_hook
        say "$hook had been reinstalled by $(who "$keep") over buildlock's: buildlock's is back in front, and that hook runs as the check again (kept at $keep)"
        ;;
    chain)
        mkdir -p "${keep%/*}"
        mv "$hook" "$keep"
        write_hook
        [ "$committed" = yes ] && manifest_add wrote-shim
        say "kept your existing hook: moved $hook to $keep; it runs as the check unless .buildlock.toml sets 'check'"
        ;;
    fresh)
        write_hook
        [ "$committed" = yes ] && manifest_add wrote-shim
        ;;
esac
case $plan in
    husky)
        if [ ! -d "$hooks" ]; then
            say "this worktree has no $hooks yet: husky makes it on npm install; until then git runs no hook here (buildlock's neither)"
        fi
        for name in pre-commit pre-merge-commit; do
            if found=$(husky_calls "$name"); then
                say "husky: $husky_dir/$name calls buildlock (line ${found%%:*})"
            elif [ "$name" = pre-commit ]; then
                say "husky keeps its hooks ($hooks_path). To coordinate your husky checks, put this line at the top of $husky_dir/pre-commit (and of $husky_dir/pre-merge-commit, to check merges), then commit it:"
                say "    $husky_line"
                say "  buildlock then runs the rest of that file as its check; where buildlock is not installed the line is skipped and the file runs as before"
                say "  (or install into $hooks instead: $this --force-hooks-path $(shq "$top"))"
            fi
        done
        ;;
    chain | fresh)
        if [ "$committed" = yes ]; then
            say "installed the shim $hook (core.hooksPath = $hooks_path): it runs buildlock where it is installed, and $team everywhere else"
        else
            say "installed the hook $hook (it runs $bin/pre-commit)"
        fi
        ;;
esac
# Managers keep the hook they replaced under another name; a copy of ours there is stale.
for b in $backups; do
    if is_ours "$b"; then
        rm -f "$b"
        say "removed $b, a stale copy of buildlock's hook that a hook manager had kept"
    fi
done
# pre-merge-commit, the same way.
write_merge_hook() {
    if [ "$committed" = yes ]; then
        copy_lf "$src/hooks/pre-commit" "$mhook.tmp"
    else
        merge_hook_text >"$mhook.tmp"
    fi
    chmod 755 "$mhook.tmp" && mv -f "$mhook.tmp" "$mhook"
}
case $mplan in
    ours)
        if [ "$committed" = yes ] && same_lf "$mhook" "$src/hooks/pre-commit"; then
            :
        elif [ "$committed" = no ] && [ "$(cat "$mhook")" = "$(merge_hook_text)" ]; then
            :
        else
            write_merge_hook
            hook_changed=yes
            say "upgraded buildlock's hook $mhook"
        fi
        ;;
    regenerated | chain)
        mkdir -p "${mkeep%/*}"
        mv -f "$mhook" "$mkeep"
        write_merge_hook
        say "kept your existing hook: moved $mhook to $mkeep; merges run buildlock's check, then it"
        ;;
    fresh)
        write_merge_hook
        [ "$committed" = yes ] && manifest_add wrote-merge-shim
        hook_changed=yes
        say "installed the hook $mhook (a merge git makes without a conflict is checked like a commit)"
        ;;
    none)
        if [ "$husky" != line ]; then
            say "left $mhook alone (it is your team's): merges made without a conflict run it, not buildlock's check"
        fi
        ;;
esac
if [ "$committed" = yes ] && [ "$husky" != line ]; then
    case $bring_back in
        yes)
            mv "$chained" "$team"
            manifest_add wrote-shim
            say "moved your team's hook back into the hooks folder as $team (earlier versions kept it in $chained)"
            ;;
        dup) rm -f "$chained" ;;
    esac
    if ! is_dispatcher "$chained" || [ "$(cat "$chained")" != "$(dispatcher_text)" ]; then
        mkdir -p "$home/chained"
        dispatcher_text >"$chained.tmp" && chmod 755 "$chained.tmp" && mv -f "$chained.tmp" "$chained"
    fi
    if ignored "$hook"; then
        say "the hooks folder $hooks is ignored by git and rewritten by husky on npm install, in each worktree apart: nothing to commit; after npm install, or in another worktree, run install.sh there again (or use the line in $husky_dir/pre-commit instead: install.sh without --force-hooks-path says it)"
    else case "$hooks/" in
        "$top/"*)
            if [ "$plan" != ours ] || [ "$bring_back" = yes ] || [ "$hook_changed" = yes ]; then
                rel=${hooks#"$top/"}
                say "the hooks folder is part of the work tree: commit it, so that every clone gets the shim and your hook:"
                say "    git -C $(shq "$top") add -A -- $(shq "$rel") && git -C $(shq "$top") commit -m 'Hooks: buildlock shim; our pre-commit hook is now pre-commit.chained' -- $(shq "$rel")"
            fi
            ;;
    esac; fi
fi

if [ "$husky" = line ] && { ! is_dispatcher "$chained" || [ "$(cat "$chained")" != "$(dispatcher_text)" ]; }; then
    # The check: husky's .husky/pre-commit, run by husky's runner.
    mkdir -p "$home/chained"
    dispatcher_text >"$chained.tmp" && chmod 755 "$chained.tmp" && mv -f "$chained.tmp" "$chained"
fi

# 3. Aliases (local config, shared by every worktree).
set_alias() {
    # git runs the alias at the top of the work tree; in a linked worktree it exports GIT_DIR
    # (not GIT_WORK_TREE), and git run from the prefix below would take that folder for the top
    # of the work tree: no relative core.hooksPath found there, no hook run. So the top is named.
    want="!f() { [ -z \"\${GIT_DIR:-}\" ] || [ -n \"\${GIT_WORK_TREE:-}\" ] || { GIT_WORK_TREE=\$PWD; export GIT_WORK_TREE; }; cd \"\${GIT_PREFIX:-.}\" && exec $(shq "$bin/$2") \"\$@\"; }; f"
    if [ "$(git -C "$top" config --local --get "alias.$1" || true)" != "$want" ]; then
        git -C "$top" config --local "alias.$1" "$want"
        say "added the alias: git $1"
    fi
}
set_alias commit-retry commit-retry
set_alias buildlock buildlock

# 4. The configuration, and what `buildlock doctor` and the hook name as the way to recover.
if [ "$(sed -n 's/^install-sh=//p' "$manifest")" != "$src/install.sh" ]; then
    { grep -v '^install-sh=' "$manifest" || true; } >"$manifest.tmp"
    printf 'install-sh=%s\n' "$src/install.sh" >>"$manifest.tmp"
    mv -f "$manifest.tmp" "$manifest"
fi
if [ ! -e "$top/.buildlock.toml" ]; then
    cp "$src/.buildlock.toml.example" "$top/.buildlock.toml"
    manifest_add "wrote-config"
    if [ "$husky" != no ]; then
        say "wrote $top/.buildlock.toml from the example; $husky_dir/pre-commit (husky's) is the check until you set 'check'"
    elif exists "$keep"; then
        say "wrote $top/.buildlock.toml from the example; your previous hook is the check until you set 'check'"
    else
        say "wrote $top/.buildlock.toml from the example: set 'check' to your build and test command"
    fi
    say "commit .buildlock.toml: worktrees and clones read it from their own checkout, so until it is committed they run with no check"
fi

say "done. Next:"
say "  - agents commit with: git commit-retry -m '…'  (waits for another agent's fix, then retries)"
say "  - see who fixes what: git buildlock status;  check the setup: git buildlock doctor"
say "  - remove it again:    $this --uninstall $(shq "$top")"
