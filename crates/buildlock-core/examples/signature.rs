//! The failure signature of saved outputs, as the hook computes it: for `bench/signatures.py` and
//! for anyone asking "why did these two failures get different signatures?".
//!
//! Usage:
//! - `signature [--show] < PAIRS`: each stdin line is `WORKTREE<TAB>OUTPUT-FILE`; prints one line
//!   per pair, the signature (with `--show`, followed by the normalised text it hashes, indented).
//!   The home directory is `$HOME` and the temp dir `$TMPDIR`, as in the hook.
//! - `signature --time REPS WORKTREE OUTPUT-FILE`: prints the median milliseconds of one
//!   signature computation over REPS runs (the file is read once, before timing).
//!
//! It prints to stdout and exits 2 on bad usage, 1 on an unreadable file; it never panics.

use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

use buildlock_core::flows::context::failure_places;
use buildlock_core::os::say;
use buildlock_core::protocol::signature;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("--time") => time(&args[1..]),
        None | Some("--show") if args.len() <= 1 => pairs(!args.is_empty()),
        _ => {
            say::say("usage: signature [--show] < PAIRS | signature --time REPS WORKTREE FILE");
            2
        }
    };
    std::process::exit(code);
}

fn pairs(show: bool) -> i32 {
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { return 1 };
        let Some((wt, file)) = line.split_once('\t') else {
            say::say(format!("expected WORKTREE<TAB>FILE, got {line:?}"));
            return 2;
        };
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                say::say(format!("{file}: {e}"));
                return 1;
            }
        };
        let places = failure_places(Path::new(wt));
        let sig = signature::signature(&bytes, &places);
        let mut text = sig;
        if show {
            for l in signature::normalise(&bytes, &places).lines() {
                text.push_str("\n    ");
                text.push_str(l);
            }
        }
        if say::out(text).is_err() {
            // A closed stdout: whoever reads has what they wanted.
            return 0;
        }
    }
    0
}

fn time(args: &[String]) -> i32 {
    let [reps, wt, file] = args else {
        say::say("usage: signature --time REPS WORKTREE FILE");
        return 2;
    };
    let Ok(reps) = reps.parse::<usize>() else {
        say::say(format!("REPS must be a number, got {reps:?}"));
        return 2;
    };
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            say::say(format!("{file}: {e}"));
            return 1;
        }
    };
    let mut ms: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            // The places as the hook finds them for each failure (the work tree resolved again).
            let sig = signature::signature(&bytes, &failure_places(Path::new(wt)));
            std::hint::black_box(sig);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let _ = say::out(format!("{:.1}", ms[ms.len() / 2]));
    0
}
