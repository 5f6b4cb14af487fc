//! What every program loads first: the repository, its configuration, its store, who we are.

use anyhow::Result;

use crate::os::repo::Repo;
use crate::protocol::config::{Config, ConfigError};
use crate::protocol::signature::Places;
use std::path::Path;
use std::sync::Arc;

use crate::protocol::config::Backend;
use crate::store::local::LocalStore;
use crate::store::registry::{ClaimsRegistry, Limits, RegistryStore};
use crate::store::remote::RemoteStore;
use crate::store::remote::claims::RemoteRegistry;
use crate::store::{Home, Policy, Store};

pub struct Context {
    pub repo: Repo,
    pub config: Config,
    /// The coordination state, whichever backend holds it.
    pub store: Arc<dyn Store>,
    /// This machine's registry (in [`Context::home`]), whatever the backend: check slots, the
    /// agents seen committing here, the `checking` locks. With the local backend it holds the
    /// claims too ([`Context::claims`] is then this same registry).
    pub registry: Arc<RegistryStore>,
    /// Where claims live (claims, agents that claim, the claim queue, `done`): this machine's
    /// registry with the local backend; one ref on the remote with `backend = "remote"`, so that
    /// nothing about claims is silently local there.
    pub claims: Arc<dyn ClaimsRegistry>,
    /// `<git common dir>/buildlock/`: this machine's own files (failure logs, the hook's hand-over
    /// files, the chained hook, the installed binaries), whatever the backend.
    pub home: Home,
    pub agent: String,
    /// Why the coordination state cannot be used (a coordination dir that is a symlink or
    /// belongs to another user), if so. The check still runs; a failure then exits 70.
    pub unusable: Option<String>,
    /// The agent was seen before (`seen/<agent>` exists, and this run renewed it).
    pub seen: bool,
    /// [`Context::agent`], read once: it reads `/proc` (the start time, the pid space), which
    /// costs more than the rest of a waiter's bookkeeping, so the hook reads it while a slow check
    /// runs, not after it failed.
    identity: std::sync::OnceLock<crate::protocol::state::Agent>,
    /// [`Context::failure_places`], read once, as `identity` (it resolves the work tree's path).
    places: std::sync::OnceLock<Places>,
}

/// Reads every configuration layer for the work tree at `worktree` (the files
/// `protocol::config::layer_files` names, in its order) and hands each text to the rules.
pub fn load_config(worktree: &Path) -> Result<Config, ConfigError> {
    let files = crate::protocol::config::layer_files(
        worktree,
        crate::os::env::user_config_file(),
        crate::os::env::config_file(),
    );
    let mut config = Config::default();
    for (file, required) in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
            Err(e) => return Err(ConfigError::unreadable(&file, e)),
        };
        config.layer(&text, &file)?;
        config.sources.push(file);
    }
    Ok(config)
}

/// The places of this machine a failure's output may name, for the signature: the work tree as
/// given and as the file system resolves it, `HOME`, and a `TMPDIR` other than `/tmp`.
pub fn failure_places(worktree: &Path) -> Places {
    Places {
        worktree: worktree.to_owned(),
        real_worktree: crate::os::fs::canonical(worktree).ok(),
        home: crate::os::env::home_dir(),
        temp_dir: crate::os::env::temp_dir_prefix().clone(),
    }
}

/// Why loading failed: configuration errors have their own exit code.
pub enum LoadError {
    Config(ConfigError),
    Other(anyhow::Error),
}

impl Context {
    pub fn load() -> Result<Context, LoadError> {
        let repo = Repo::discover().map_err(LoadError::Other)?;
        let config = load_config(&repo.worktree).map_err(LoadError::Config)?;
        // An id that could pass for buildlock's own text is a configuration error naming its
        // variable (exit 78), before anything is recorded under it.
        let agent = crate::os::env::agent_id(&repo.worktree).map_err(|bad| {
            LoadError::Config(crate::protocol::config::ConfigError {
                file: "the environment".into(),
                line: None,
                key: Some(bad.var.to_owned()),
                message: bad.message,
            })
        })?;
        let home = Home::new(repo.buildlock_dir());
        // The one place a backend is chosen, for the state and for the claims.
        let registry = Arc::new(RegistryStore::new(home.path()));
        let (store, claims): (Arc<dyn Store>, Arc<dyn ClaimsRegistry>) = match config.backend {
            Backend::Local => (
                Arc::new(LocalStore::new(home.path().to_owned())),
                registry.clone(),
            ),
            Backend::Remote => {
                let remote = RemoteStore::new(
                    &repo.git_dir,
                    &config.remote,
                    config.wait,
                    config.remote_poll,
                    config.stale_after,
                )
                .map_err(|m| match &config.remote_origin {
                    Some(origin) => LoadError::Config(origin.error(m)),
                    None => LoadError::Config(crate::protocol::config::ConfigError {
                        file: config.sources.last().cloned().unwrap_or_else(|| {
                            repo.worktree.join(crate::protocol::config::REPO_FILE)
                        }),
                        line: None,
                        key: Some("coordination.remote".to_owned()),
                        message: format!("{m} (the default remote is `origin`)"),
                    }),
                })?;
                let claims = RemoteRegistry::new(
                    &repo.git_dir,
                    &config.remote,
                    remote.url(),
                    home.path(),
                    config.wait,
                    config.remote_poll,
                )
                .map_err(|m| LoadError::Other(anyhow::anyhow!(m)))?;
                (Arc::new(remote), Arc::new(claims))
            }
        };
        let unusable = crate::os::fs::check_owned(home.path())
            .err()
            .map(|e| format!("{e:#}"));
        // Every buildlock program is a sign of life that renews the agent's claims (one syscall,
        // which fails at once for an agent never seen; no write when it is fresh within the
        // grain, a hundredth of `claims.ttl`).
        let seen = registry.sign_of_life(&agent, crate::store::registry::grain(config.claims_ttl));
        // Under the remote backend, the same renews the agent's claims on the remote: nothing
        // for an agent without claims, a push at most every `claims.ttl / 3` for one with.
        if claims.is_remote() && crate::os::env::coordination_enabled() {
            claims.renew(
                &agent,
                Limits {
                    ttl: config.claims_ttl,
                    slots: config.check_slots as usize,
                },
            );
        }
        Ok(Context {
            repo,
            config,
            store,
            registry,
            claims,
            home,
            agent,
            unusable,
            seen,
            identity: std::sync::OnceLock::new(),
            places: std::sync::OnceLock::new(),
        })
    }

    pub fn policy(&self) -> Policy {
        Policy {
            stale_after: self.config.stale_after,
            max_fix_attempts: self.config.max_fix_attempts,
            max_fix_time: self.config.max_fix_time,
        }
    }

    /// The base key for the current scope.
    pub fn base(&self) -> String {
        crate::protocol::key::base(
            self.config.scope,
            || self.repo.branch(),
            || self.repo.head_commit(),
        )
    }

    /// What failure normalisation replaces on this machine (see [`failure_places`]).
    pub fn failure_places(&self) -> Places {
        self.places
            .get_or_init(|| failure_places(&self.repo.worktree))
            .clone()
    }

    pub fn agent(&self) -> crate::protocol::state::Agent {
        self.identity().clone()
    }

    /// Reads now what recording a failure needs of this process and this machine
    /// ([`Context::agent`], [`Context::failure_places`]); called while a check that is still
    /// running after a moment keeps the CPU idle, so that a failure is decided sooner (in a
    /// crowd, every agent's bookkeeping after the failure queues on the same cores). Never on
    /// the green path of a fast check.
    pub fn prepare_for_a_failure(&self) {
        self.identity();
        self.places
            .get_or_init(|| failure_places(&self.repo.worktree));
    }

    fn identity(&self) -> &crate::protocol::state::Agent {
        self.identity.get_or_init(|| {
            // Under commit-retry or `buildlock ci`, the process that acts for the agent and
            // lives on while it waits; else this one. With its start time and pid space, so
            // that a waiter is never confused with a process that reused its pid, or with
            // another container's.
            let holder = crate::os::env::holder().unwrap_or_else(std::process::id);
            let p = crate::os::process::of(holder);
            crate::protocol::state::Agent {
                id: self.agent.clone(),
                pid: p.pid,
                host: p.host,
                start: p.start,
                pid_space: p.pid_space,
            }
        })
    }
}
