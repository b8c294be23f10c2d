//! A runtime for the agent's own tests.

use std::num::NonZeroUsize;

use edgeloop_api::OpTime;

use super::{LoadOptions, LoadedModel, OutputTensor, Runtime, RuntimeError};
use crate::inputs::InputTensor;

/// A runtime for the agent's own tests whose every run (and profile, and
/// outputs) calls `run`: one that panics, one that takes its time.
pub(crate) struct ScriptedRuntime {
    pub run: fn(),
}

struct ScriptedModel(fn());

impl LoadedModel for ScriptedModel {
    fn run(&mut self) -> Result<(), RuntimeError> {
        (self.0)();
        Ok(())
    }
    fn profile(&mut self, _: NonZeroUsize) -> Result<Vec<OpTime>, RuntimeError> {
        (self.0)();
        Ok(vec![])
    }
    fn outputs(&mut self) -> Result<Vec<OutputTensor>, RuntimeError> {
        (self.0)();
        Ok(vec![])
    }
}

impl Runtime for ScriptedRuntime {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn version(&self) -> String {
        "0".into()
    }
    fn precisions(&self) -> Vec<String> {
        vec![]
    }
    fn load(&self, _: &[u8], _: &[InputTensor], _: LoadOptions) -> Result<Box<dyn LoadedModel>, RuntimeError> {
        Ok(Box::new(ScriptedModel(self.run)))
    }
}
