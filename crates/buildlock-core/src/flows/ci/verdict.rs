//! The job's verdict (contract: "the CI result"): exit 3 for a tested commit that passed only on
//! the fix (0 with `ci.pass_on_fix`), a block in the log, and the account in the CI's job summary.

use super::{Ci, WHO};
use crate::os::{env, say};
use crate::protocol::config::Deliver;
use crate::protocol::exit;

/// A name for Markdown: inside a code span, with nothing that could end it or a table cell.
pub(super) fn md(name: &str) -> String {
    let clean: String = say::inert(name)
        .chars()
        .map(|c| match c {
            '`' => '\'',
            '|' => '/',
            c => c,
        })
        .collect();
    format!("`{clean}`")
}

impl Ci<'_> {
    /// The job's verdict: the exit code (3 for a tested commit that passed only on the fix),
    /// a block in the log and, where the CI has one, the job summary.
    pub(super) fn verdict(&mut self, code: i32) -> i32 {
        let ctx = self.ctx;
        let on_fix = code == exit::OK
            && self.failed
            && self
                .passed_on
                .as_ref()
                .is_some_and(|(head, dirty)| *dirty || *head != self.tested);
        let final_code = if on_fix && !ctx.config.ci_pass_on_fix {
            exit::BROKEN_PASSES_ON_FIX
        } else {
            code
        };
        let (title, verdict) = if on_fix {
            (
                "broken, passes on the fix",
                format!(
                    "broken: the tested commit failed here; this job passed only on the fix \
                     (exit {final_code}{})",
                    if ctx.config.ci_pass_on_fix {
                        ": ci.pass_on_fix = true"
                    } else {
                        "; ci.pass_on_fix = true makes it 0"
                    }
                ),
            )
        } else if code == exit::OK && self.failed {
            (
                "passed on a re-run",
                "passed: the check failed first, then passed on the same tested commit with no \
                 change to it (the failure was not in the commit, or it is flaky) (exit 0)"
                    .to_owned(),
            )
        } else if code == exit::OK {
            ("passed", "passed (exit 0)".to_owned())
        } else {
            let why = match code {
                exit::FIXER if !env::coordination_enabled() => {
                    "failed (coordination is off: nobody was elected)"
                }
                exit::FIXER => "failed: this job is the fixer and the failure is not fixed",
                exit::BLOCKED => "failed: still waiting for a fix when the wait ran out",
                exit::COORDINATION => "failed, and coordination failed: nobody was elected",
                exit::CONFIG => "could not run: a configuration error, or the command cannot run",
                c if c > 128 => "interrupted by a signal",
                _ => "failed",
            };
            ("failed", format!("{why} (exit {code})"))
        };
        let lookup = self
            .fix
            .as_ref()
            .filter(|f| on_fix && !f.mine && f.delivered.is_none())
            .and_then(|f| f.commit.clone());
        if let Some(commit) = lookup {
            let found = self.find_delivery(&commit);
            if let Some(fix) = self.fix.as_mut() {
                fix.delivered = found;
            }
        }
        let account = self.account(title, &verdict, on_fix);
        for line in account.plain.lines() {
            say::say(line);
        }
        if let Some(file) = env::step_summary() {
            use std::io::Write;
            let wrote = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)
                .and_then(|mut f| f.write_all(account.markdown.as_bytes()));
            if let Err(e) = wrote {
                say::warn(format!(
                    "{WHO}: could not write the job summary to {}: {e}",
                    file.display()
                ));
            }
        }
        final_code
    }

    /// The account of the job, as lines for the log and as Markdown for the job summary.
    fn account(&self, title: &str, verdict: &str, on_fix: bool) -> Account {
        let ctx = self.ctx;
        let mut rows: Vec<(&str, String)> = Vec::new();
        let tested = match (&self.tested, &self.tested_branch) {
            (Some(t), Some(b)) => format!("{} on branch {}", md(t), md(b)),
            (Some(t), None) => md(t),
            (None, _) => "none (no commit yet)".to_owned(),
        };
        rows.push(("Tested commit", tested));
        rows.push(("Verdict", verdict.to_owned()));
        if let Some(fix) = self.fix.as_ref().filter(|_| on_fix || self.failed) {
            let by = fix
                .by
                .as_deref()
                .map(md)
                .unwrap_or_else(|| "unknown".into());
            rows.push((
                "Fixed by",
                if fix.mine {
                    format!("{by} (this job)")
                } else {
                    by
                },
            ));
            rows.push((
                "Fix commit",
                fix.commit
                    .as_deref()
                    .map(md)
                    .unwrap_or_else(|| "none: the fix made no commit".into()),
            ));
            if fix.commit.is_some() {
                let mut delivered =
                    fix.delivered
                        .clone()
                        .unwrap_or_else(|| match ctx.config.ci_deliver {
                            Deliver::None => "not delivered (ci.deliver = \"none\")".into(),
                            _ if fix.mine => "not delivered".into(),
                            _ => "not found on a branch (see the fixer's job)".into(),
                        });
                if let Some(link) = &fix.link {
                    delivered.push_str(&format!(" ([open a pull/merge request]({link}))"));
                }
                rows.push(("Delivered", delivered));
            }
            if on_fix {
                let me = md(&ctx.agent);
                let passed = match (&fix.by, fix.mine) {
                    (_, true) => format!("{me} (this job, the fixer)"),
                    (Some(by), false) => {
                        format!("{} (the fixer's own check), {me} (this job)", md(by))
                    }
                    (None, false) => format!("{me} (this job)"),
                };
                rows.push(("Passed on the fix", passed));
            }
            if !fix.waited.is_empty() {
                rows.push((
                    "Waited for the fix",
                    format!(
                        "{} (each job reports its own verdict)",
                        fix.waited
                            .iter()
                            .map(|w| md(w))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        let heading = format!("buildlock ci ({}): {title}", md(&ctx.agent));
        let mut markdown = format!("### {heading}\n\n");
        let mut plain = format!("--- {} ---\n", heading.replace('`', ""));
        for (k, v) in &rows {
            markdown.push_str(&format!("- **{k}:** {v}\n"));
            plain.push_str(&format!("  {k}: {}\n", v.replace('`', "")));
        }
        markdown.push('\n');
        Account { plain, markdown }
    }
}

struct Account {
    plain: String,
    markdown: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_names_are_inert() {
        assert_eq!(md("a`b|c\n"), "`a'b/c\\n`");
    }
}
