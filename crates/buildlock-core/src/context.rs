//! What every program loads first: the repository, its configuration, its store, who we are.

use anyhow::Result;

use crate::config::{Config, ConfigError};
use crate::repo::Repo;
use crate::store::{Policy, Store};

pub struct Context {
    pub repo: Repo,
    pub config: Config,
    pub store: Store,
    pub agent: String,
}

/// Why loading failed: configuration errors have their own exit code.
pub enum LoadError {
    Config(ConfigError),
    Other(anyhow::Error),
}

impl Context {
    pub fn load() -> Result<Context, LoadError> {
        let repo = Repo::discover().map_err(LoadError::Other)?;
        let config = Config::load(&repo.worktree).map_err(LoadError::Config)?;
        let store = Store::new(repo.buildlock_dir());
        let agent = crate::env::agent_id(&repo.worktree);
        Ok(Context {
            repo,
            config,
            store,
            agent,
        })
    }

    pub fn policy(&self) -> Policy {
        Policy {
            stale_after: self.config.stale_after,
            max_fix_attempts: self.config.max_fix_attempts,
        }
    }

    /// The base key for the current scope.
    pub fn base(&self) -> String {
        crate::key::base(&self.config, &self.repo)
    }

    pub fn agent(&self) -> crate::state::Agent {
        crate::state::Agent {
            id: self.agent.clone(),
            pid: std::process::id(),
            host: crate::process::hostname(),
        }
    }
}
