//! The ground buildlock stands on, one module per primitive. Nothing here makes a decision.
//!
//! It is the only place that knows the platform: each module keeps one interface for Linux,
//! macOS and Windows and says in its header what each costs and where one differs.
//!
//! - [`lock`]: the only module that takes a lock (flock through fd-lock); [`arena`]: the
//!   allocator of the hook and commit-retry built against musl;
//! - [`fs`]: atomic writes; [`check`]: running a command in its own process group ([`spawn`]:
//!   starting it without forking us, on Linux);
//! - [`deadline`]: running a program (the remote backend's git) that ends, with its group, by a deadline;
//! - [`process`], [`signals`]: processes and signals; [`poll`]: waiting for input on a pipe; [`env`]: the only module that reads the
//!   environment; [`time`]: clocks, durations, RFC 3339; [`say`]: everything printed for people;
//! - [`bell`]: waking waiters when a writer rings, or a process exits (Linux: a FIFO, pidfds;
//!   Windows: a directory change notification, process handles; macOS: a kqueue);
//! - [`changes`]: the paths a commit changes (the index git commits against HEAD);
//! - [`repo`]: the git repository (work tree, common dir, branch, HEAD); [`fault`]: fault
//!   injection for tests.

pub mod arena;
pub mod bell;
pub mod changes;
pub mod check;
pub mod deadline;
pub mod env;
pub mod fault;
pub mod fs;
pub mod lock;
pub mod poll;
pub mod process;
pub mod remote_git;
pub mod repo;
pub mod say;
pub mod signals;
#[cfg(target_os = "linux")]
pub mod spawn;
#[cfg(test)]
pub(crate) mod testing;
pub mod time;
