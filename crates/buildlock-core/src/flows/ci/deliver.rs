//! Where a fixer's fix commit goes besides `refs/buildlock/` (`ci.deliver`): a normal branch
//! `buildlock/fix/<12 hex of the tested commit>`, or the tested branch fast-forwarded; and the
//! link that opens a pull or merge request on GitHub and GitLab. The pushes are in [`super::push`].

use super::push;
use super::verdict::md;
use super::{Ci, JobFix, WHO};
use crate::os::remote_git::{Git, Pushed};
use crate::os::{env, say};
use crate::protocol::config::{Backend, Deliver};

/// The branch a fix of `tested` is delivered to: `buildlock/fix/<12 hex of the tested commit>`.
pub fn fix_branch(tested: &str) -> String {
    format!("buildlock/fix/{}", &tested[..tested.len().min(12)])
}

/// The forge a remote URL is on, for the link that opens a pull or merge request.
#[derive(Debug, PartialEq, Eq)]
enum Forge {
    GitHub,
    GitLab,
}

/// The host (no user, no port) and the repository path (no `.git`) of a remote URL:
/// `https://[user[:token]@]host[:port]/path`, `ssh://[user@]host[:port]/path`, `user@host:path`.
fn host_and_path(url: &str) -> Option<(String, String)> {
    let (host_part, path) = match url.split_once("://") {
        Some((_, rest)) => rest.split_once('/')?,
        None => {
            let (h, p) = url.split_once(':')?;
            if h.contains('/') {
                return None; // a local path
            }
            (h, p)
        }
    };
    let host = host_part.rsplit('@').next()?;
    let host = host.split(':').next()?.to_ascii_lowercase();
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path).trim_matches('/');
    (!host.is_empty() && !path.is_empty()).then(|| (host, path.to_owned()))
}

fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let host = rest.split('/').next()?.rsplit('@').next()?;
    Some(host.split(':').next()?.to_ascii_lowercase())
}

/// Percent-encodes what a branch name may hold that a URL may not.
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// The address that opens a pull request (GitHub) or merge request (GitLab) from `branch` into
/// `base`, when the remote at `url` is on one of them; `servers` are the CI's own forge
/// addresses (GitHub Enterprise Server, self-managed GitLab). Never carries credentials.
fn pull_request_link(
    url: &str,
    branch: &str,
    base: Option<&str>,
    servers: &(Option<String>, Option<String>),
) -> Option<(Forge, String)> {
    let (host, path) = host_and_path(url)?;
    let on = |server: &Option<String>| {
        server
            .as_deref()
            .filter(|s| url_host(s).as_deref() == Some(host.as_str()))
            .map(|s| s.trim_end_matches('/').to_owned())
    };
    let (forge, web) = if host == "github.com" {
        (Forge::GitHub, "https://github.com".to_owned())
    } else if let Some(web) = on(&servers.0) {
        (Forge::GitHub, web)
    } else if let Some(web) = on(&servers.1) {
        (Forge::GitLab, web)
    } else if host == "gitlab.com" || host.starts_with("gitlab.") {
        (Forge::GitLab, format!("https://{host}"))
    } else {
        return None;
    };
    let branch = url_escape(branch);
    let link = match (&forge, base) {
        (Forge::GitHub, Some(base)) => format!(
            "{web}/{path}/compare/{}...{branch}?expand=1",
            url_escape(base)
        ),
        (Forge::GitHub, None) => format!("{web}/{path}/pull/new/{branch}"),
        (Forge::GitLab, base) => format!(
            "{web}/{path}/-/merge_requests/new?merge_request%5Bsource_branch%5D={branch}{}",
            base.map(|b| format!("&merge_request%5Btarget_branch%5D={}", url_escape(b)))
                .unwrap_or_default()
        ),
    };
    Some((forge, link))
}

impl Ci<'_> {
    /// The remote a fix is delivered to: `coordination.remote` with the remote backend, `origin`
    /// with the local one.
    fn delivery_remote(&self) -> String {
        match self.ctx.config.backend {
            Backend::Remote => self.ctx.config.remote.clone(),
            Backend::Local => "origin".to_owned(),
        }
    }

    /// Delivers the fix commit `commit` as `ci.deliver` says, and says where it went.
    pub(super) fn deliver(&self, commit: &str, fix: &mut JobFix) {
        let ctx = self.ctx;
        let how = ctx.config.ci_deliver;
        if how == Deliver::None {
            return;
        }
        let Some(tested) = self.tested.as_deref() else {
            return;
        };
        let remote = self.delivery_remote();
        let git = match push::connect(&ctx.repo.git_dir, &remote) {
            Ok(git) => git,
            Err(why) => {
                say::warn(format!(
                    "{WHO}: the fix commit {commit} could not be delivered (ci.deliver = \
                     \"{}\"): {why}",
                    deliver_name(how)
                ));
                fix.delivered = Some(format!(
                    "not delivered: no remote {} to push to",
                    md(&remote)
                ));
                return;
            }
        };
        if how == Deliver::Push {
            if let Some(branch) = self.tested_branch.as_deref() {
                match push::push_branch(&git, branch, commit, Some(tested)) {
                    Ok(Pushed::Landed) => {
                        say::headline(
                            say::Tone::Good,
                            format!(
                                "{WHO}: delivered the fix: branch `{}` on `{remote}` moved \
                                 forward from the tested commit to the fix commit {commit}",
                                say::inert(branch)
                            ),
                        );
                        fix.delivered = Some(format!(
                            "pushed to branch {} on {} (fast-forward from the tested commit)",
                            md(branch),
                            md(&remote)
                        ));
                        return;
                    }
                    Ok(Pushed::Stale) => say::say(format!(
                        "{WHO}: branch `{}` on `{remote}` moved on since the tested commit: \
                         not pushing onto it; delivering the fix as a branch instead",
                        say::inert(branch)
                    )),
                    Err(e) => say::say(format!(
                        "{WHO}: could not push the fix onto branch `{}` ({e}); delivering it \
                         as a branch instead",
                        say::inert(branch)
                    )),
                }
            } else {
                say::say(format!(
                    "{WHO}: the tested branch is not known (a detached checkout, and no \
                     GITHUB_REF or CI_COMMIT_BRANCH): delivering the fix as a branch instead"
                ));
            }
        }
        self.deliver_branch(&git, &remote, tested, commit, fix);
    }

    /// Creates the branch `buildlock/fix/<12 hex>` at `commit`, only where it does not exist.
    fn deliver_branch(
        &self,
        git: &Git,
        remote: &str,
        tested: &str,
        commit: &str,
        fix: &mut JobFix,
    ) {
        let branch = fix_branch(tested);
        let pushed = push::push_branch(git, &branch, commit, None);
        match pushed {
            Ok(Pushed::Landed) => {}
            Ok(Pushed::Stale) => {
                let there = push::branch_tips(git, std::slice::from_ref(&branch))
                    .ok()
                    .and_then(|t| t.into_iter().next().map(|(_, oid)| oid));
                if there.as_deref() != Some(commit) {
                    say::say(format!(
                        "{WHO}: branch `{branch}` on `{remote}` already holds another fix ({}); \
                         left as it is: our fix commit {commit} is not delivered there",
                        there.as_deref().unwrap_or("unknown")
                    ));
                    fix.delivered = Some(format!(
                        "not delivered: branch {} on {} already holds another fix",
                        md(&branch),
                        md(remote)
                    ));
                    return;
                }
            }
            Err(e) => {
                say::warn(format!(
                    "{WHO}: the fix commit {commit} could not be delivered to branch `{branch}` \
                     on `{remote}`: {e}"
                ));
                fix.delivered = Some(format!(
                    "not delivered: pushing branch {} to {} failed",
                    md(&branch),
                    md(remote)
                ));
                return;
            }
        }
        fix.delivered = Some(format!("branch {} on {}", md(&branch), md(remote)));
        let link = git.url().ok().and_then(|url| {
            pull_request_link(
                &url,
                &branch,
                self.tested_branch.as_deref(),
                &env::ci_servers(),
            )
        });
        say::headline(
            say::Tone::Good,
            format!("{WHO}: delivered the fix commit {commit} to branch `{branch}` on `{remote}`"),
        );
        match &link {
            Some((Forge::GitHub, l)) => say::say(format!("{WHO}: open a pull request: {l}")),
            Some((Forge::GitLab, l)) => say::say(format!("{WHO}: open a merge request: {l}")),
            None => say::say(format!(
                "{WHO}: open a pull or merge request from branch `{branch}`{}",
                self.tested_branch
                    .as_deref()
                    .map(|b| format!(" into `{}`", say::inert(b)))
                    .unwrap_or_default()
            )),
        }
        fix.link = link.map(|(_, l)| l);
    }

    /// For a job that did not fix: where the fixer delivered the fix (looked up on the remote:
    /// the fix branch of our tested commit, or the tested branch, pointing at the fix commit).
    pub(super) fn find_delivery(&self, commit: &str) -> Option<String> {
        let ctx = self.ctx;
        if ctx.config.ci_deliver == Deliver::None || !env::coordination_enabled() {
            return None;
        }
        let remote = self.delivery_remote();
        let git = push::connect(&ctx.repo.git_dir, &remote).ok()?;
        let mut branches: Vec<String> =
            self.tested.as_deref().map(fix_branch).into_iter().collect();
        if ctx.config.ci_deliver == Deliver::Push {
            branches.extend(self.tested_branch.clone());
        }
        let tips = push::branch_tips(&git, &branches).ok()?;
        let (branch, _) = tips.iter().find(|(_, oid)| oid == commit)?;
        Some(format!("branch {} on {}", md(branch), md(&remote)))
    }
}

fn deliver_name(d: Deliver) -> &'static str {
    match d {
        Deliver::Branch => "branch",
        Deliver::Push => "push",
        Deliver::None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fix_branch_takes_12_hex() {
        assert_eq!(
            fix_branch("0123456789abcdef0123456789abcdef01234567"),
            "buildlock/fix/0123456789ab"
        );
    }

    #[test]
    fn pull_request_links() {
        let none = (None, None);
        for url in [
            "https://github.com/o/r.git",
            "https://x-access-token:SECRET@github.com/o/r",
            "git@github.com:o/r.git",
            "ssh://git@github.com/o/r.git",
        ] {
            let (forge, link) =
                pull_request_link(url, "buildlock/fix/0123456789ab", Some("main"), &none).unwrap();
            assert_eq!(forge, Forge::GitHub);
            assert_eq!(
                link, "https://github.com/o/r/compare/main...buildlock/fix/0123456789ab?expand=1",
                "{url}"
            );
        }
        let (_, link) = pull_request_link("https://github.com/o/r", "b", None, &none).unwrap();
        assert_eq!(link, "https://github.com/o/r/pull/new/b");
        let (forge, link) = pull_request_link(
            "https://buildlock:tok@gitlab.example.com/g/sub/p.git",
            "buildlock/fix/0123456789ab",
            Some("main"),
            &(None, Some("https://gitlab.example.com".into())),
        )
        .unwrap();
        assert_eq!(forge, Forge::GitLab);
        assert_eq!(
            link,
            "https://gitlab.example.com/g/sub/p/-/merge_requests/new?merge_request%5Bsource_branch%5D=buildlock/fix/0123456789ab&merge_request%5Btarget_branch%5D=main"
        );
        let (forge, _) = pull_request_link(
            "https://ghe.corp/o/r",
            "b",
            None,
            &(Some("https://ghe.corp".into()), None),
        )
        .unwrap();
        assert_eq!(forge, Forge::GitHub);
        assert!(pull_request_link("git://127.0.0.1:9418/srv.git", "b", None, &none).is_none());
        assert!(pull_request_link("/srv/repo.git", "b", None, &none).is_none());
        assert!(pull_request_link("file:///srv/repo.git", "b", None, &none).is_none());
    }
}
