//! The seam between the measurement engine and inference runtimes. The
//! engine times `LoadedModel::run`; a runtime only loads and runs.

mod tract;

use std::collections::BTreeMap;
use std::sync::Arc;

use edgeloop_api::RuntimeInfo;

pub use self::tract::TractRuntime;
use crate::inputs::InputTensor;

/// What a runtime reports when it cannot load or run a model. The message is
/// the runtime's own, passed on to the client.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RuntimeError(pub String);

/// Options fixed at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    pub threads: usize,
}

pub trait Runtime: Send + Sync {
    fn name(&self) -> &'static str;
    fn version(&self) -> String;
    /// Precisions this runtime executes natively on this machine.
    fn precisions(&self) -> Vec<String>;
    /// Parses and optimises `model` for exactly these inputs; after this,
    /// `run` does nothing but inference.
    fn load(
        &self,
        model: &[u8],
        inputs: &[InputTensor],
        options: LoadOptions,
    ) -> Result<Box<dyn LoadedModel>, RuntimeError>;
}

/// A model ready to run on the inputs it was loaded with.
pub trait LoadedModel {
    fn run(&mut self) -> Result<(), RuntimeError>;
}

/// The runtimes this agent can measure with, by name.
#[derive(Clone, Default)]
pub struct Runtimes {
    available: BTreeMap<&'static str, Arc<dyn Runtime>>,
    unavailable: BTreeMap<String, String>,
}

impl Runtimes {
    /// Every runtime compiled into this build.
    pub fn detect() -> Self {
        let mut runtimes = Runtimes::default();
        runtimes.add(Arc::new(TractRuntime));
        runtimes
    }

    pub fn add(&mut self, runtime: Arc<dyn Runtime>) {
        self.available.insert(runtime.name(), runtime);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Runtime>> {
        self.available.get(name)
    }

    /// Why `name` can't be used here (unknown to this build, or failed to load).
    pub fn unavailable_reason(&self, name: &str) -> String {
        self.unavailable.get(name).cloned().unwrap_or_else(|| {
            let known: Vec<_> = self.available.keys().copied().collect();
            format!("runtime `{name}` is not available on this agent (available: {})", known.join(", "))
        })
    }

    pub fn infos(&self) -> Vec<RuntimeInfo> {
        self.available
            .values()
            .map(|r| RuntimeInfo { name: r.name().into(), version: r.version(), precisions: r.precisions() })
            .collect()
    }

    pub fn unavailable(&self) -> &BTreeMap<String, String> {
        &self.unavailable
    }
}
