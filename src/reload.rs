//! The policy sets in force and their hot reload: [`PolicySets`] holds the enforced set and
//! the optional shadow set (`policy.shadow_dir`); when their directories change, or on SIGHUP,
//! they are loaded again.
//!
//! Changes are found by polling the directories' contents every `policy.watch_interval`, not
//! with file-system events: a Kubernetes ConfigMap volume changes by swapping a symlink, git
//! checkouts and editors replace files by rename, and network file systems send no events at
//! all; reading a few kilobytes of policy every two seconds notices all of them the same way.
//! A change is loaded once the directory has stopped changing for one short settle period, so
//! a policy copied file by file is not loaded half-way. A set that does not validate is
//! refused (its errors logged with file, line and column, `flowgate_policy_reload_total`
//! counts the failure) and is not tried again until its files change.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::authz::{PolicyEngine, PolicyError, PolicyProblem};
use crate::config::PolicyConfig;
use crate::shutdown::Signal;
use crate::telemetry::{Metrics, PolicySet};

/// The enforced policy set and the shadow set. A call reads each once, at its start, and keeps
/// it to the end, whatever reloads land meanwhile.
pub struct PolicySets {
    enforced: ArcSwap<PolicyEngine>,
    /// Evaluated on every call and recorded, never enforced.
    shadow: ArcSwapOption<PolicyEngine>,
    config: PolicyConfig,
    /// One reload at a time (the watcher and SIGHUP may both ask).
    reloading: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
}

/// The result of reloading the policy directories.
#[derive(Debug)]
pub struct Reload {
    /// The enforced set, if it was reloaded: its version, or why it was refused (the old set
    /// stays).
    pub enforced: Option<Result<String, PolicyError>>,
    /// The shadow set, when configured.
    pub shadow: Option<Result<String, PolicyError>>,
}

impl PolicySets {
    pub fn new(
        config: PolicyConfig,
        enforced: PolicyEngine,
        shadow: Option<PolicyEngine>,
        metrics: Arc<Metrics>,
    ) -> PolicySets {
        metrics.policy_loaded(PolicySet::Enforced, Some(enforced.version()));
        metrics.policy_loaded(PolicySet::Shadow, shadow.as_ref().map(PolicyEngine::version));
        PolicySets {
            enforced: ArcSwap::from_pointee(enforced),
            shadow: ArcSwapOption::from(shadow.map(Arc::new)),
            config,
            reloading: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    pub fn enforced(&self) -> Arc<PolicyEngine> {
        self.enforced.load_full()
    }

    pub fn shadow(&self) -> Option<Arc<PolicyEngine>> {
        self.shadow.load_full()
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Loads `policy.dir` (and `policy.shadow_dir`) again: `enforced` and `shadow` say which.
    /// Each set is validated completely before it replaces the one in force; a set that does
    /// not load is refused and the last good one stays. Calls already past their `load` finish
    /// under the set they started with.
    pub async fn reload(&self, enforced: bool, shadow: bool) -> Reload {
        let _one_at_a_time = self.reloading.lock().await;
        let enforced_dir = enforced.then(|| self.config.dir.clone());
        let shadow_dir = self.config.shadow_dir.clone().filter(|_| shadow);
        // A panic while loading (a bug in a parser, say) refuses the sets like any other
        // problem; the watcher and the last good sets carry on.
        let load = |dir: Option<PathBuf>| {
            dir.map(|dir| {
                std::panic::catch_unwind(|| PolicyEngine::load(&dir)).unwrap_or_else(|_| {
                    Err(PolicyError::Invalid(vec![PolicyProblem {
                        file: dir.clone(),
                        line: None,
                        column: None,
                        message: "loading the policy set panicked".into(),
                    }]))
                })
            })
        };
        let (enforced_loaded, shadow_loaded) =
            tokio::task::spawn_blocking(move || (load(enforced_dir), load(shadow_dir)))
                .await
                .expect("loading policies cannot panic past catch_unwind");
        let enforced = enforced_loaded.map(|loaded| self.install(PolicySet::Enforced, &self.config.dir, loaded));
        let shadow = match (shadow_loaded, &self.config.shadow_dir) {
            (Some(loaded), Some(dir)) => Some(self.install(PolicySet::Shadow, dir, loaded)),
            _ => None,
        };
        Reload { enforced, shadow }
    }

    fn install(
        &self,
        set: PolicySet,
        dir: &Path,
        loaded: Result<PolicyEngine, PolicyError>,
    ) -> Result<String, PolicyError> {
        match loaded {
            Ok(engine) => {
                let version = engine.version().to_owned();
                let current = match set {
                    PolicySet::Enforced => Some(self.enforced.load_full()),
                    PolicySet::Shadow => self.shadow.load_full(),
                };
                for warning in &engine.warnings {
                    tracing::warn!(%warning, set = set.as_str(), "policy warning");
                }
                if current.as_deref().map(PolicyEngine::version) != Some(version.as_str()) {
                    tracing::info!(set = set.as_str(), dir = %dir.display(), policy_version = %version, "policy set loaded");
                    match set {
                        PolicySet::Enforced => self.enforced.store(Arc::new(engine)),
                        PolicySet::Shadow => self.shadow.store(Some(Arc::new(engine))),
                    }
                    self.metrics.policy_loaded(set, Some(&version));
                }
                self.metrics.policy_reloaded(set, true);
                Ok(version)
            }
            Err(error) => {
                tracing::error!(set = set.as_str(), dir = %dir.display(), %error, "policy set refused; the last good set stays in force");
                self.metrics.policy_reloaded(set, false);
                Err(error)
            }
        }
    }
}

/// How long a changed directory must stay unchanged before it is loaded.
const SETTLE: Duration = Duration::from_millis(200);

/// A digest of what a policy directory would load: every `*.cedar` file and the schema, by
/// name and content. `None` when the directory cannot be read (the reload will say why).
pub fn fingerprint(dir: &Path) -> Option<u64> {
    let mut paths = crate::authz::policy_files(dir).ok()?;
    paths.push(dir.join(crate::authz::SCHEMA_FILE));
    let mut hasher = DefaultHasher::new();
    for path in paths {
        hasher.write(path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
        hasher.write_u8(0);
        // A file that vanishes between listing and reading still changes the digest.
        hasher.write(&std::fs::read(&path).unwrap_or_default());
        hasher.write_u8(0);
    }
    Some(hasher.finish())
}

/// The digests of every watched directory.
fn fingerprints(dirs: &[PathBuf]) -> Vec<Option<u64>> {
    dirs.iter().map(|dir| fingerprint(dir)).collect()
}

async fn fingerprints_off_runtime(dirs: Arc<Vec<PathBuf>>) -> Vec<Option<u64>> {
    tokio::task::spawn_blocking(move || fingerprints(&dirs)).await.unwrap_or_default()
}

/// Reloads on SIGHUP, and on changes when `policy.watch_interval` is not zero, until shutdown.
pub fn spawn_policy_watch(sets: Arc<PolicySets>, mut shutdown: Signal) {
    let config = sets.config().clone();
    let dirs: Arc<Vec<PathBuf>> =
        Arc::new([Some(config.dir.clone()), config.shadow_dir.clone()].into_iter().flatten().collect());
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(stream) => Some(stream),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; policies reload only on change");
            None
        }
    };
    tokio::spawn(async move {
        let mut seen = fingerprints_off_runtime(dirs.clone()).await;
        let watching = !config.watch_interval.is_zero();
        let mut ticks = tokio::time::interval(if watching { config.watch_interval } else { Duration::from_secs(3600) });
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hangup_received = async {
                match &mut hangup {
                    Some(stream) => stream.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = hangup_received => {
                    tracing::info!("SIGHUP: reloading policies");
                    seen = fingerprints_off_runtime(dirs.clone()).await;
                    sets.reload(true, true).await;
                }
                _ = ticks.tick(), if watching => {
                    let now = fingerprints_off_runtime(dirs.clone()).await;
                    if now == seen {
                        continue;
                    }
                    // Wait until the directories stop changing (a copy in progress).
                    let mut settled = now;
                    loop {
                        tokio::time::sleep(SETTLE).await;
                        let again = fingerprints_off_runtime(dirs.clone()).await;
                        if again == settled {
                            break;
                        }
                        settled = again;
                    }
                    // Only the sets whose files changed are reloaded (and counted).
                    let changed = |index: usize| settled.get(index) != seen.get(index);
                    let (enforced, shadow) = (changed(0), changed(1));
                    seen = settled;
                    tracing::info!(enforced, shadow, "policy files changed: reloading");
                    sets.reload(enforced, shadow).await;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_follows_policy_files_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.cedar"), "permit(principal, action, resource);").unwrap();
        let first = fingerprint(dir.path()).unwrap();
        std::fs::write(dir.path().join("notes.md"), "not a policy").unwrap();
        std::fs::create_dir(dir.path().join("tests")).unwrap();
        assert_eq!(fingerprint(dir.path()), Some(first), "other files do not count");
        std::fs::write(dir.path().join("a.cedar"), "forbid(principal, action, resource);").unwrap();
        let second = fingerprint(dir.path()).unwrap();
        assert_ne!(first, second, "content counts");
        std::fs::rename(dir.path().join("a.cedar"), dir.path().join("b.cedar")).unwrap();
        assert_ne!(fingerprint(dir.path()), Some(second), "names count");
        assert_eq!(fingerprint(&dir.path().join("missing")), None);
    }
}
